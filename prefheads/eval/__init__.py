"""Evaluation: tasks scored both ways (log-prob and every head) from one backbone pass per state.

* :mod:`.evaluate` — :func:`evaluate` runs tasks and groups into a versioned results dict;
* :mod:`.scores` — every candidate's log-prob and rewards (:func:`score_examples`);
* :mod:`.measures` — a task's own metrics, predicted-choice distributions, calibration;
* :mod:`.groups` — group scores by the rule each group names (GLUE, GPT4All, RACE);
* :mod:`.baselines` — lm-evaluation-harness-exact log-prob, the baseline a head must beat;
* :mod:`.margins` — a head's margin over it (paired bootstrap, McNemar), the length baseline;
* :mod:`.metrics` — the metric functions; :mod:`.lmeval` — the harness's scoring;
  :mod:`.report` — results files, comparison tables, HTML reports.
"""

from prefheads.eval.baselines import LMEVAL_METHODS, LMEVAL_PREFIX, baseline_of, lmeval_tables
from prefheads.eval.evaluate import (SCHEMA, SCHEMA_VERSION, SUBSETS, EvalRun, evaluate, evaluate_task, expand_tasks,
                                     heads_template)
from prefheads.eval.groups import GROUP_SCORES, aggregates
from prefheads.eval.measures import calibration, choice_metrics, choice_names, task_metrics
from prefheads.eval.scores import LOGPROB, ChoiceScores, method_name, score_examples, summarize

__all__ = ["GROUP_SCORES", "LMEVAL_METHODS", "LMEVAL_PREFIX", "LOGPROB", "SCHEMA", "SCHEMA_VERSION", "SUBSETS",
           "ChoiceScores", "EvalRun", "aggregates", "baseline_of", "calibration", "choice_metrics", "choice_names",
           "evaluate", "evaluate_task", "expand_tasks", "heads_template", "lmeval_tables", "method_name", "score_examples",
           "summarize", "task_metrics"]
