"""An app for the inbox's end-to-end test: ``--app tests.apps.inbox_app:agent``.

The model first says what it is about to do and asks to send a payment, which needs a
person's approval; the note it writes carries an XSS payload and text in other scripts, so
the test can see that the inbox shows them as text. After the payment it says it is done.
"""

from __future__ import annotations

import msgspec

from agentfsm import Agent, ModelResponse, ModelToolCall, tool
from agentfsm.testing import ScriptedModel, say

#: What the model puts in the note: markup that must never run in the inbox.
PAYLOAD = (
    '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 1">'
    " Zahlung für Café Ōsaka, 東京 ✓"
)


@tool(needs_approval=True, approval_timeout=86_400)
def pay(to: str, amount: int, note: str = "") -> str:
    """Pay a supplier. Money leaves the account: a person checks each payment.

    Args:
        to: the supplier's IBAN.
        amount: in euro cents.
        note: the text on the transfer.
    """
    return f"paid {amount} to {to}"


def _ask() -> ModelResponse:
    arguments = {"to": "DE89370400440532013000", "amount": 125000, "note": PAYLOAD}
    return ModelResponse(
        text="The invoice from Café Ōsaka is due today; I am paying it now.",
        tool_calls=(
            ModelToolCall(
                call_id="call_pay", name="pay", arguments=msgspec.json.encode(arguments).decode()
            ),
        ),
    )


def agent() -> Agent:
    return Agent(
        "accountant",
        "You pay invoices.",
        ScriptedModel([_ask(), say("Paid.")]),
        tools=[pay],
    )
