"""The counters service.

Followers, following, posts, likes and replies counts, write-combined and cached.
"""
