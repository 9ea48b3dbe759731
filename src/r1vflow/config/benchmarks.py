"""evaluate.benchmarks: one published benchmark the evaluate stage scores every model on
(loaders and official scorers in r1vflow.eval.benchmarks; docs/evaluation.md)."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from r1vflow.config.base import Strict

BenchmarkName = Literal["mmmu", "mathvista", "math500", "mathvision", "aime2024", "olympiadbench"]


# The judge's key comes from one of these variables, never from another one the evaluate task
# holds (AWS_*, MLFLOW_*, R1VFLOW_S3_*): the key is sent as a bearer token to the judge's host.
JUDGE_KEY_ENV = r"^(OPENAI_API_KEY|R1VFLOW_JUDGE_[A-Z0-9_]+)$"
LOOPBACK_HOSTS = ("localhost",)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() in LOOPBACK_HOSTS


def check_judge_url(url: str) -> str:
    """`url` when it is https (or http to a loopback address) without credentials, else
    ValueError (whose text never shows the URL: it may hold a password)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise ValueError("not a URL") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("holds credentials: put the key in the variable named by "
                         "judge_key_env instead")
    if not host or parts.scheme not in ("https", "http"):
        raise ValueError("must be an https:// URL")
    if parts.scheme == "http" and not _loopback(host):
        raise ValueError("must be https:// (plain http only to a loopback address such as "
                         "127.0.0.1): the judge is sent the API key")
    return url


_HUB_PATH = re.compile(r"^(hub|github):[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# The benchmarks whose authors publish their data in a GitHub repository, which a
# github:<owner>/<name> path may name (r1vflow.eval.benchmarks.hub.GITHUB_SPLIT_FILES has
# their layouts; tests/test_benchmark_hub.py keeps the two in step).
GITHUB_BENCHMARKS = frozenset({"mathvision"})


def _check_source(name: str, path: str, revision: str | None) -> None:
    """A hub:<owner>/<name> or github:<owner>/<name> path needs a commit in `revision`; other
    paths take none."""
    scheme = path.split(":", 1)[0]
    if scheme not in ("hub", "github"):
        if revision is not None:
            raise ValueError(f"benchmark {name}: revision pins a hub:<owner>/<name> path; "
                             f"{path!r} is a local one, drop revision")
        return
    if not _HUB_PATH.match(path):
        raise ValueError(f"benchmark {name}: {path!r} is no {scheme}:<owner>/<name> path")
    if scheme == "github" and name not in GITHUB_BENCHMARKS:
        raise ValueError(f"benchmark {name}: no GitHub layout is known for it (github: paths: "
                         f"{', '.join(sorted(GITHUB_BENCHMARKS))}); use hub:<owner>/<name>")
    if revision is None:
        raise ValueError(f"benchmark {name}: {path} needs revision: the repository's commit "
                         "(40 hex digits: the hub's 'Files and versions' history, GitHub's "
                         "commit list) so the score is reproducible")
    if not _COMMIT.match(revision):
        raise ValueError(f"benchmark {name}: revision {revision!r} is no commit (40 lowercase "
                         "hex digits); branches and tags move")


class BenchmarkConfig(Strict):
    """One published benchmark the evaluate stage scores every model on (docs/evaluation.md)."""

    name: BenchmarkName = Field(description="Which benchmark (its loader and official scorer).")
    path: str = Field(description="The benchmark's file or folder in its published layout. "
                                  "Locally a path on disk (relative: to the directory the run "
                                  "starts in); on a cluster a path inside the evaluate task's "
                                  "container (a mounted volume or a file baked into the image); "
                                  "package:<module>/<path> for files installed with a package; "
                                  "hub:<owner>/<name> for a hub data set at `revision`, "
                                  "github:<owner>/<name> for the authors' GitHub repository "
                                  "at `revision` (MathVision), downloaded and cached by the "
                                  "evaluate task.")
    revision: str | None = Field(None, description="With a hub: or github: path: the "
                                                   "commit (40 hex digits) to download; "
                                                   "required there, refused elsewhere.")
    split: str | None = Field(None, description="Split; None: the benchmark's usual one "
                                                "(MMMU validation, MathVista testmini, ...).")
    subsets: list[str] | None = Field(None, description="Keep only these MMMU subjects, "
                                                        "MathVista tasks, OlympiadBench subsets...")
    limit: int | None = Field(None, gt=0, description="Score only the first N items.")
    samples: int = Field(1, ge=1, description="Responses per item; pass@1 is their mean "
                                              "(the reports: 5) and pass@k is added.")
    temperature: float = Field(0.0, ge=0, description="0 means greedy decoding.")
    max_new_tokens: int | None = Field(None, gt=0, description="None: evaluate.max_new_tokens.")
    judge_base_url: str | None = Field(None, description="MathVista only: an OpenAI-compatible "
                                                         "API that extracts answers (the official "
                                                         "path); None: rule-based extraction.")
    judge_model: str | None = Field(None, description="The judge's model name.")
    judge_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Environment variable holding the judge's API key (never the key): "
                    "OPENAI_API_KEY or R1VFLOW_JUDGE_<NAME> (an allow-list: the evaluate task "
                    "also holds the S3 and MLflow credentials, which must never be sent).")

    @field_validator("judge_base_url")
    @classmethod
    def _judge_url(cls, value: str | None) -> str | None:
        return None if value is None else check_judge_url(value)

    @field_validator("judge_key_env")
    @classmethod
    def _judge_key_env(cls, value: str) -> str:
        if not re.match(JUDGE_KEY_ENV, value):
            raise ValueError(f"{value} is not a judge key variable: use OPENAI_API_KEY or "
                             "R1VFLOW_JUDGE_<NAME> (the evaluate task also holds the S3 and "
                             "MLflow credentials, which must never be sent to a judge)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BenchmarkConfig:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(f"benchmark {self.name}: samples={self.samples} needs temperature "
                             "> 0 (greedy copies are identical); set temperature, e.g. 1.0")
        _check_source(self.name, self.path, self.revision)
        if (self.judge_base_url is None) != (self.judge_model is None):
            raise ValueError(f"benchmark {self.name}: set judge_base_url and judge_model "
                             "together (or neither)")
        if self.judge_base_url is not None and self.name != "mathvista":
            raise ValueError(f"benchmark {self.name}: a judge extracts answers for mathvista "
                             "only; drop judge_base_url/judge_model")
        return self
