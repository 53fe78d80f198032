"""Call recordings: stereo WAV built while the call runs, encrypted per tenant, stored behind the S3 API."""
