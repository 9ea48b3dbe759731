"""Optional answer extraction by an OpenAI-compatible chat endpoint (MathVista's official path
asks GPT-4 to extract the answer from a free-form response).

Off by default. The key is read from the environment variable the config names, never from the
config itself, so it cannot reach a compiled pipeline, MLflow params or a report. The ``openai``
package is imported only when a judge is used; it is not among r1vflow's dependencies
(``pip install openai`` to use this).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

INSTRUCTION = (
    "You read a question and a model's response to it. Reply with the final answer the response "
    "gives and nothing else: a choice's text for multiple choice, a number without units for a "
    "numeric question, a Python list for a list question. Reply with an empty line if the "
    "response gives no answer.")


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge is: ``base_url`` of an OpenAI-compatible API, the ``model`` name and the
    environment variable that holds the key."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"

    def __post_init__(self) -> None:
        """The config's rules again where the key is sent (r1vflow.config.benchmarks): an
        allowed key variable, an https (or loopback) endpoint."""
        from r1vflow.config.benchmarks import JUDGE_KEY_ENV, check_judge_url

        if not re.match(JUDGE_KEY_ENV, self.api_key_env):
            raise ValueError(f"judge key variable {self.api_key_env} is not allowed "
                             "(OPENAI_API_KEY or R1VFLOW_JUDGE_<NAME>)")
        try:
            check_judge_url(self.base_url)
        except ValueError as err:
            raise ValueError(f"judge base URL {err}") from None


def judge_extract(judge: JudgeConfig, query: str, response: str) -> str:
    """The judge's extraction of the answer in ``response`` to ``query`` (greedy, one call)."""
    key = os.environ.get(judge.api_key_env)
    if not key:
        raise RuntimeError(f"the MathVista judge reads its key from ${judge.api_key_env}, "
                           "which is not set")
    try:
        import openai
    except ImportError:
        raise RuntimeError("the MathVista judge needs the 'openai' package, which r1vflow does "
                           "not install: pip install openai, or drop the judge") from None
    client = openai.OpenAI(base_url=judge.base_url, api_key=key)
    reply = client.chat.completions.create(
        model=judge.model, temperature=0,
        messages=[{"role": "system", "content": INSTRUCTION},
                  {"role": "user", "content": f"{query}\n\nModel response: {response}"}])
    return (reply.choices[0].message.content or "").strip()
