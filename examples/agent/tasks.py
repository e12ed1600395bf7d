"""A research agent: 20 LLM calls in a loop, each one a step.

A rate-limit error fails the attempt; the retry replays the iterations already done from
their checkpoints (the LLM is not called again for them) and goes on at the one that failed.
``concurrency_key`` gives each tenant one run at a time across all workers, so a busy
tenant cannot take every worker.
"""

from __future__ import annotations

from typing import Any

from llm import FakeLLM, RateLimitError

from celery_durable import RetryPolicy, current_run, durable_task, step


@step
def think(llm: dict[str, Any], iteration: int, question: str, notes: list[str]) -> str:
    client = FakeLLM(**llm)
    prompt = f"{question}\nnotes so far: {len(notes)}"
    return client.complete(iteration, prompt)


@durable_task(
    retry=RetryPolicy(max_attempts=5, min_delay=0.5, max_delay=5, retry_on=(RateLimitError,)),
    concurrency_limit=1,
    concurrency_key=lambda tenant, *args, **kwargs: tenant,
)
def research(tenant: str, session: str, question: str, iterations: int = 20,
             rate_limit_at: int | None = None) -> dict[str, Any]:
    llm = {"tenant": tenant, "session": session, "rate_limit_at": rate_limit_at}
    notes: list[str] = []
    for i in range(iterations):  # steps think, think#2, ... think#20
        notes.append(think(llm, i, question, notes))
    print(f"[attempt {current_run().attempt}] {session}: {len(notes)} notes", flush=True)
    return {"tenant": tenant, "session": session, "notes": notes}
