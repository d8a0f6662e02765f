"""Organic data curation (DESIGN.md stage 1): readers, HTML extraction, filters, language ID, dedup, quality, decontamination. Plain Python; actors/curate.py runs it on Ray Data."""
