"""Integrations with the hosts scraping apps already run; each is imported on demand.

- :mod:`leadperf.integrations.celery`: a Celery worker that scrapes chunks of URLs on one
  long-lived scraper, limiter, dedup and database pool per process (``leadperf[celery]``).
"""
