"""Private machinery behind :mod:`leadperf.scraper`: engines, platform limiter, dispatcher."""
