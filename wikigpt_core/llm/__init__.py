"""One LLM client for the teacher and the judge, below both `align` and `eval`.

    client.py    ChatClient: cache, bounded concurrency, retries of transient errors only,
                 a request cap, usage accounting; make_client(TeacherConfig)
    backends.py  OpenAIBackend (any OpenAI-compatible server) | OfflineBackend (rules, no model)
    contract.py  what a backend returns and raises (Completion, TeacherError, ...)
    offline.py   the offline rule teacher/judge itself
    prompts.py   every request kind's prompt and reply schema, and reply parsing
    judge.py     Judge and position-debiased pairwise judging
    budget.py    the failure budget of a stage that pays a teacher or judge
    cache.py     on-disk response cache; text.py small text utilities

Nothing here imports `align` or `eval`; both import from here.
"""
