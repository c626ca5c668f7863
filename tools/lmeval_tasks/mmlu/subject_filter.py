"""process_docs filters for the local MMLU subject tasks (tools/lmeval_tasks/mmlu/).

data/tasks/mmlu/<split>.jsonl holds all 57 subjects; `subject_<name>` keeps the rows of
one subject, in file order, which is exactly the upstream per-subject split
(hails/mmlu_no_train/<name>/<split>). Resolved by name through the module-level
__getattr__ so that each YAML can say `!function subject_filter.subject_<name>`.
"""


def _make(subject):
    def process_docs(dataset):
        return dataset.filter(lambda doc: doc["subject"] == subject)

    process_docs.__name__ = f"subject_{subject}"
    process_docs.__qualname__ = process_docs.__name__
    return process_docs


def __getattr__(name):
    if name.startswith("subject_"):
        fn = _make(name[len("subject_"):])
        globals()[name] = fn
        return fn
    raise AttributeError(name)
