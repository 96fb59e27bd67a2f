"""Generator: SID vocabulary, TIGER / decoder-only LM backbones, head plug-ins, training and
trie-constrained beam search (see README, section Generator)."""
