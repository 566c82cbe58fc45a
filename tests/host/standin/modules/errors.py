"""Follows ``modules/errors.py`` ``report``: A1111 prints and swallows exceptions from script hooks."""
import traceback

reported = []


def report(message, *, exc_info=False):
    reported.append((message, traceback.format_exc() if exc_info else ""))


def record_exception():
    pass
