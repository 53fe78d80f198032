"""Speech to text: PocketSphinx offline (biased per agent), Deepgram streaming (cloud)."""
