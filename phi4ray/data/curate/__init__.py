"""Organic data curation: readers, HTML extraction, the document filter protocol and its filters
(corruption, language ID, decontamination), dedup, the quality classifier, the stage's outputs.
Plain Python; actors/data/curate.py runs it on Ray Data."""
