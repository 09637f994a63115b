"""FASTA genomes -> tokenized, masked, index-pure training windows (tf.data)."""
