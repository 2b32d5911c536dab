"""A person deciding, as a separate process: ``python tests/decider.py DSN PLAN_JSON``.

The plan is a list of decisions ``{"run", "call", "verdict", "by", "always", "arguments",
"stale"}``; each is made on the call as the store shows it now (or with a stale digest), and
what the person was told is printed as one JSON line per decision: ``posted``, ``repeated``
(the same decision was already posted) or ``refused`` with the reason."""

from __future__ import annotations

import asyncio
import json
import sys

from agentfsm import AgentFSMError, Decision, open_store


async def main(dsn: str, plan: list[dict[str, object]]) -> None:
    store = open_store(dsn)
    try:
        for entry in plan:
            run_id, call_id = str(entry["run"]), str(entry["call"])
            told: dict[str, object] = {"entry": entry}
            try:
                state = await store.load(run_id)
                shown = next((r for r in state.interruptions if r.call_id == call_id), None)
                digest = "0" * 64 if shown is None or entry["stale"] else shown.digest
                told["shown"] = None if shown is None else shown.arguments
                decision = Decision(
                    call_id=call_id,
                    digest=digest,
                    approved=entry["verdict"] != "reject",
                    always=bool(entry["always"]),
                    arguments=entry["arguments"],  # type: ignore[arg-type]
                    by=str(entry["by"]),
                )
                told["told"] = "posted" if await store.decide(run_id, decision) else "repeated"
            except AgentFSMError as exc:
                told["told"] = "refused"
                told["reason"] = f"{type(exc).__name__}: {exc}"
            print(json.dumps(told), flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
