"""Trie-constrained beam search over semantic IDs (tensor trie, no Python loop over beams)."""

from components.generator.decoding.beam import BeamResult, constrained_beam_search
from components.generator.decoding.trie import PrefixTrie, SIDTrie, SparseSIDTrie, build_trie

__all__ = ["BeamResult", "PrefixTrie", "SIDTrie", "SparseSIDTrie", "build_trie", "constrained_beam_search"]
