"""The posts service: Posts, replies, likes and user timelines."""
