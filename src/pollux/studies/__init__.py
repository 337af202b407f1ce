"""Worked studies built on pollux (user layer; nothing in the library imports them).

- `underestimated` — spectra whose reported errors miss part of the scatter; what
  ``pollux demo`` runs.
"""
