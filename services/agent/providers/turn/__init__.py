"""End-of-turn models: does the caller's audio so far sound like a finished turn?"""
