"""Trie-constrained beam search over semantic IDs (tensor trie, no Python loop over beams)."""

from components.generator.decoding.beam import BeamResult, constrained_beam_search
from components.generator.decoding.trie import SIDTrie

__all__ = ["BeamResult", "SIDTrie", "constrained_beam_search"]
