"""The autograder (``python -m labkit.grade``): submissions, task runs, points, gradebook.

``course`` (what is graded), ``submission`` (finding and reading submissions), ``runner`` (one
limited task run), ``plugin`` (the pytest plugin inside a run), ``report`` (points and files),
``grader`` (a whole class).
"""
from labkit.grading.course import TASKS, WEIGHTS
from labkit.grading.grader import grade
from labkit.grading.runner import Limits

__all__ = ["TASKS", "WEIGHTS", "grade", "Limits"]
