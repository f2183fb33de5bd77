"""Alignment data: the teacher/judge, the SFT dataset and the preference pairs."""
