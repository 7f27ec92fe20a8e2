"""The feed service.

The home feed read path: inbox merged with big authors' recent posts.
"""
