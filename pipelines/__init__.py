"""The NMT pipeline around ``models``; see README.md, section Layout."""
