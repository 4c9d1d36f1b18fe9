"""The config loader (`stepplan.settings`): one typed, strict schema; every unknown key, wrong
type or bad value stops start-up with one line naming the file and the key; the environment is
read there and nowhere else."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stepplan import settings as settings_module
from stepplan.settings import ConfigError, load_settings
from tests.conftest import ROOT, STEPPLAN

UPSTREAM = '[upstreams.up]\nprotocol = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> settings_module.Settings:
    cfg = tmp_path / "stepplan.toml"
    cfg.write_text(text)
    return load_settings(cfg, env=env or {})


@pytest.mark.parametrize(("text", "key"), [
    ('[database]\nulr = "sqlite:///x.db"\n', "database.ulr"),
    ('[redis]\nurl_ = "redis://x"\n', "redis.url_"),
    ('[server]\nmax_concurency = 2\n', "server.max_concurency"),
    (UPSTREAM + "max_retry = 1\n", "upstreams.up.max_retry"),
    ('[models."step-3.5-flash"]\ncontext_lenght = 1000\n', "models.step-3.5-flash.context_lenght"),
    ("[router]\npro_shar = 0.2\n", "router.pro_shar"),
    ("[billing]\nenabeld = false\n", "enabeld"),
    ("[billing.plans.tiny]\nmonthly_credit = 5\n", "billing.plans.tiny"),
    ("[metrcis]\nport = 9100\n", "metrcis"),
])
def test_an_unknown_key_in_any_section_names_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    message = str(err.value)
    assert key in message and str(tmp_path / "stepplan.toml") in message
    assert "\n" not in message


@pytest.mark.parametrize(("text", "key", "says"), [
    ('[database]\nurl = 5\n', "database.url", "must be a string"),
    ('[server]\nmax_body_bytes = "1MB"\n', "server.max_body_bytes", "must be an integer"),
    ('[server]\nmax_concurrency = 0\n', "server.max_concurrency", "must be positive"),
    ('[server]\nlog_level = "chatty"\n', "server.log_level", "must be one of"),
    ('[server]\ndefault_upstream = "nowhere"\n', "server.default_upstream", "not a configured upstream"),
    (UPSTREAM + 'first_byte_timeout = "5"\n', "upstreams.up.first_byte_timeout", "must be a number"),
    (UPSTREAM + "max_retries = -1\n", "upstreams.up.max_retries", "0 or more"),
    (UPSTREAM + "replay_reasoning = 1\n", "upstreams.up.replay_reasoning", "true or false"),
    ('[upstreams.up]\nprotocol = "grpc"\nbase_url = "http://x/v1"\n', "upstreams.up.protocol", "must be one of"),
    ('[upstreams.up]\nprotocol = "openai"\n', "upstreams.up.base_url", "is required"),
    ('[models."m"]\ncontext_length = "big"\n', "models.m.context_length", "must be an integer"),
    ('[models."m"]\nefforts = "high"\n', "models.m.efforts", "must be an array"),
    ('[models."m"]\nthinking_style = "loud"\n', "models.m.thinking_style", "must be one of"),
    ('[models."m"]\nupstream = "nowhere"\n', "models.m.upstream", "not a configured upstream"),
    ("[router]\npro_share = 1.5\n", "router.pro_share", "between 0 and 1"),
    ('[router]\npro_share = "lots"\n', "router.pro_share", "must be a number"),
    ('[router]\nflash_engine = "step-9"\n', "router.flash_engine", "not a model of the catalog"),
    ("[billing]\nreserve_output_tokens = 0\n", "billing", "must be positive"),
    ("[router\n", "", "not valid TOML"),
])
def test_a_wrong_type_or_bad_value_names_the_key_and_the_file(tmp_path: Path, text: str, key: str,
                                                             says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'stepplan.toml'}: {key}") and says in message


def test_a_valid_config_loads_typed_values(tmp_path: Path) -> None:
    s = load(tmp_path, UPSTREAM + 'api_key_env = "UP_KEY"\nidle_timeout = 7\nheaders = { "x-org" = "o" }\n'
             '[server]\ndefault_upstream = "up"\nmax_concurrency = 3\nlog_level = "WARNING"\n'
             '[router]\npro_share = 0.25\nthreshold = 0\n'
             '[models."deepseek-chat"]\nupstream = "up"\nprice_input = 1\nefforts = ["low"]\n'
             '[models."step-3.5-flash"]\nupstream = "up"\n',
             env={"UP_KEY": "sk-env"})
    up = s.upstreams["up"]
    assert up.name == "up" and up.api_key == "sk-env" and up.idle_timeout == 7.0 and isinstance(up.idle_timeout, float)
    assert up.headers == {"x-org": "o"} and s.default_upstream == "up" and s.max_concurrency == 3
    assert s.log_level == "warning" and s.router.pro_share == 0.25 and s.router.threshold == 0.0
    chat = s.catalog.get("deepseek-chat")
    assert chat.price_input == "1" and chat.efforts == ("low",)
    # a config-defined deepseek-* model keeps thinking the DeepSeek way unless it says otherwise
    assert chat.thinking_style == "deepseek" and s.catalog.get("step-3.5-flash").thinking_style == ""


def test_the_environment_is_read_by_load_settings(tmp_path: Path) -> None:
    s = load(tmp_path, '[server]\nlog_level = "debug"\nadmin_token = "file"\n',
             env={"STEPPLAN_LOG_LEVEL": "error", "STEPPLAN_CLOCK_OFFSET": "86400", "STEPPLAN_ADMIN_TOKEN": "env",
                  "STEPPLAN_DATABASE_URL": "sqlite:///env.db"})
    assert (s.log_level, s.clock_offset, s.admin_token, s.database_url) == ("error", 86400, "env", "sqlite:///env.db")
    assert load_settings(None, env={}).clock_offset == 0
    with pytest.raises(ConfigError, match="STEPPLAN_CLOCK_OFFSET must be an integer"):
        load_settings(None, env={"STEPPLAN_CLOCK_OFFSET": "tomorrow"})


def test_a_new_section_is_one_typed_dataclass(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What the next engineer does for, say, [metrics]: a dataclass and a field (the loader is generic)."""

    @dataclass
    class Metrics:
        port: int = 0
        paths: list[str] = field(default_factory=list)

        def check(self) -> None:
            if not 0 <= self.port < 65536:
                raise ConfigError("port", "must be a TCP port")

    @dataclass
    class File(settings_module.ConfigFile):
        metrics: Metrics = field(default_factory=Metrics)

    monkeypatch.setattr(settings_module, "ConfigFile", File)
    monkeypatch.setitem(globals(), "Metrics", Metrics)  # get_type_hints resolves names in this module
    cfg = tmp_path / "c.toml"
    cfg.write_text('[metrics]\nport = 9100\npaths = ["/a"]\n')
    assert settings_module.read_config_file(cfg).metrics == Metrics(9100, ["/a"])  # type: ignore[attr-defined]
    cfg.write_text("[metrics]\nport = 70000\n")
    with pytest.raises(ConfigError, match=r"c\.toml: metrics\.port: must be a TCP port"):
        settings_module.read_config_file(cfg)


def _stepplan(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPPLAN_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([*STEPPLAN, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


@pytest.mark.parametrize("text", ["[router]\npro_shar = 0.2\n", '[server]\nmax_concurency = 2\n'])
@pytest.mark.parametrize("where", ["serve", "group"])
def test_serve_with_a_bad_config_exits_non_zero_with_one_line(tmp_path: Path, text: str, where: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    args = ("serve", "--config", str(cfg), "--port", "9") if where == "serve" else ("--config", str(cfg), "serve")
    out = _stepplan(*args, cwd=tmp_path)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith(f"error: cannot load config: {cfg}: ") and text.split("\n")[1].split(" ")[0] in lines[0]
