"""``delift demo``: a known-answer case per use case on built-in data (``cases``) and the command (``command``)."""
