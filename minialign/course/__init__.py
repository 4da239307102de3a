"""Course assignments cut from the library itself (on the command line: ``minialign course list | make | grade |
grade-all | autograder | restore | check``, in ``cli.py``). One concern a module: ``manifest`` (assignments as
data), ``cut`` (where a unit's body lies, its stub), ``tree`` (student trees, term trees), ``grade`` (running the
tests and scoring, a class at a time), ``sandbox`` (the trust boundary: what enters from a student, the process
it runs in), ``policy`` (what a unit's body may contain), ``bundle`` (Gradescope), ``handout``, ``check`` (the
release check), ``mutate`` (its mutation pass) and ``plugin`` (pytest, inside the grading process).

An assignment is data (``course/NN-name.toml``): its tasks, each with its points, the pytest marker that grades
it (``taskN_M``) and its units — functions or methods (``path::Qual.name``) or named regions inside one
(``path::Qual.name#region``: the lines from ``# BEGIN SOLUTION region`` to ``# END SOLUTION``). From it:

* ``make``  writes a student repository: this project as it is, each unit's body replaced by its docstring and
  ``raise NotImplementedError("Task N.M: unit — title; see ASSIGNMENT.md")`` (a region by that line alone),
  everything else byte for byte, and the handout ``ASSIGNMENT.md``;
* ``grade`` runs the assignment's tests on a student's code, task by task: a fresh copy of this repository with
  that task's unit bodies spliced in from the student's files (checked against ``policy.py``), in a sandboxed
  process in which ``minialign`` and ``minialign.kernels`` are that copy's. Tests, fixtures and data come from
  this repository, never from the student's tree; an instructor's hidden tests (``--extra-tests``) run in a
  pass of their own, and only their names and pass/fail are ever shown;
* ``restore`` puts the solution back into an untouched student tree;
* ``check`` is the release check (``course/check.py``; ``tests/test_course.py`` runs it in CI).

Tests run in another process through ``course/plugin.py``, which reports each test phase's outcome and the stub
(if any) that made it fail through a pipe the grader owns (``sandbox.py``).
"""
from .cut import Cut, apply_cuts, cuts_by_file, locate, region_names, restore_cuts, split_spec, stub_line
from .grade import (
                    Grade,
                    Run,
                    TaskScore,
                    TestOutcome,
                    collect,
                    extra_test_files,
                    grade,
                    grading_workspace,
                    outcomes,
                    run_tests,
                    score,
                    zero_results,
)
from .handout import exercises, handout, marker_rows, tests_of_task, with_exercises, with_marker_rows
from .manifest import (
                    COURSE,
                    DEFAULT_TIMEOUT,
                    HANDOUT,
                    HANDOUTS,
                    NOT_RUN,
                    RELEASE_TEST,
                    ROOT,
                    SOLUTIONS,
                    TASK_TIMEOUT,
                    Assignment,
                    CourseError,
                    Experiment,
                    Question,
                    Task,
                    assignments,
                    load,
                    marked_files,
                    parse_manifest,
                    require_repository,
                    task_expression,
)
from .tree import (
                    assignment_of,
                    make,
                    project_files,
                    recorded_assignment,
                    restore,
                    student_files,
                    tree_differences,
                    write_tree,
)

__all__ = ["Cut", "apply_cuts", "cuts_by_file", "locate", "region_names", "restore_cuts", "split_spec", "stub_line",
           "Grade", "Run", "TaskScore", "TestOutcome", "collect", "extra_test_files", "grade", "grading_workspace",
           "outcomes", "run_tests", "score", "zero_results", "exercises", "handout", "marker_rows", "tests_of_task",
           "with_exercises", "with_marker_rows", "COURSE", "DEFAULT_TIMEOUT", "HANDOUT", "HANDOUTS", "NOT_RUN",
           "RELEASE_TEST", "ROOT", "SOLUTIONS", "TASK_TIMEOUT", "Assignment", "CourseError", "Experiment", "Question",
           "Task", "assignments", "load", "marked_files", "parse_manifest", "require_repository", "task_expression",
           "assignment_of", "make", "project_files", "recorded_assignment", "restore", "student_files",
           "tree_differences", "write_tree"]
