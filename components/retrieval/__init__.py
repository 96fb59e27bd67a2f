"""Similar-user retrieval: BM25 over user pseudo-documents + user vectors in faiss, merged."""

from components.retrieval.bm25 import SparseBM25
from components.retrieval.retriever import Neighbor, RepresentationCache, RetrievalError, UserRetriever

__all__ = ["Neighbor", "RepresentationCache", "RetrievalError", "SparseBM25", "UserRetriever"]
