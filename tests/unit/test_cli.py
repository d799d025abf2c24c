"""The command line: bad input exits 2 with one line and writes nothing (train/eval/resume end to
end: tests/integration)."""
import pytest

from pipeline.cli import main

BAD = [
    (["--set", "method=reptile"], "method: unknown method 'reptile'; allowed: "
                                  "adam, fomaml, l2l, maml, mc1, mc2, metalstm"),
    (["--set", "alpha=0"], "alpha: must be > 0"),
    (["--set", "alpha=-0.5"], "alpha: must be > 0"),
    (["--set", "beta=0"], "beta: must be > 0"),
    (["--set", "task.shots=0"], "task.shots: K must be >= 1"),
    (["--set", "gumbel_temperature=0"], "gumbel_temperature: must be > 0"),
    (["--set", "gumbel_temperature=-1"], "gumbel_temperature: must be > 0"),
    (["--set", "learning_rate=0.1"], "learning_rate: unknown key; allowed: method, alpha, beta"),
    (["--set", "task.way=5"], "task.way: unknown key; did you mean 'task.ways'? allowed: task.name, task.shots, "
                                   "task.query, task.order"),
    (["--set", "task.name=cifar"], "task.name: unknown task 'cifar'; allowed: sinusoid, polynomial, omniglot, "
                                   "miniimagenet"),
    (["--set", "task.name=omniglot"], "task.data: omniglot needs the data's location"),
    (["--set", "task.name=omniglot", "--set", "task.data=[/no/such.zip]"], "task.data: /no/such.zip does not exist"),
    (["--set", "model.batch_norm=running"], "model.batch_norm: unknown choice 'running'; allowed: batch, none"),
    (["--set", "alpha=fast"], "alpha: expected float, got 'fast'"),
    (["--set", "iterations=1.5"], "iterations: expected int, got 1.5"),
    (["--set", "alpha"], "--set: expected key=value, got 'alpha'"),
    (["--set", "eval.mask=mean"], "eval.mask: unknown mode 'mean'; allowed: sample, argmax"),
    (["--set", "eval.shots=5,0"], "eval.shots: every K must be >= 1"),
    (["--set", "task.order=3"], "task.order: polynomial order must be one of 0, 1, 2"),
    (["--set", "inner_steps=0"], "inner_steps: must be >= 1"),
    (["--set", "backend=spark"], "backend: unknown backend 'spark'; allowed: ray, local"),
    (["--workers", "-1"], "ray.workers: must be >= 0"),
    (["--set", "train.block_tasks=26"], "train.block_tasks: must be in [0, meta_batch_size = 25] (0 = one contiguous "
                                        "range per worker; a size that does not divide the meta-batch leaves a "
                                        "smaller last block), got 26"),
    (["--set", "ray.workers={min: 3, max: 2}"], "ray.workers: min (3) must be <= max (2)"),
    (["--set", "ray.workers={min: 0, max: 2}"], "ray.workers: min must be >= 1, got 0"),
    (["--set", "ray.workers={min: 1}"], "ray.workers: elastic workers are {min: M, max: N} with integers, got "
                                        "{'min': 1}"),
    (["--set", "ray.workers={min: 1, max: 3}"], "ray.workers: elastic workers ({min, max}) need train.block_tasks > 0,"
                                                " so that the result does not depend on how many workers run (e.g. "
                                                "train.block_tasks=9)"),
    (["--set", "ray.workers=many"], "ray.workers: expected int or dict, got 'many'"),
    (["--set", "ray.replace_timeout_s=0"], "ray.replace_timeout_s: must be > 0, got 0.0"),
    (["--set", "train.block_tasks=-1"], "train.block_tasks: must be in [0, meta_batch_size = 25]"),
    (["--set", "ray.gpus_per_worker=-0.5"], "ray.gpus_per_worker: must be >= 0"),
    (["--set", "alpha=inf"], "alpha: must be a finite number, got inf"),
    (["--set", "alpha=.nan"], "alpha: must be a finite number, got nan"),
    (["--set", "beta=-.inf"], "beta: must be a finite number, got -inf"),
    (["--set", "gumbel_temperature=nan"], "gumbel_temperature: must be a finite number, got nan"),
    (["--set", "train.grad_clip=inf"], "train.grad_clip: must be a finite number, got inf"),
    (["--set", "model.init_std=NaN"], "model.init_std: must be a finite number, got nan"),
    (["--set", "ray.cpus_per_worker=1e400"], "ray.cpus_per_worker: must be a finite number, got inf"),
    (["--set", "ray.gpus_per_worker=.inf"], "ray.gpus_per_worker: must be a finite number, got inf"),
    (["--set", "seed=-1"], "seed: must be in [0, 2**64), got -1"),
    (["--set", "eval.seed=18446744073709551616"], "eval.seed: must be in [0, 2**64), got 18446744073709551616"),
    (["--set", "ray.nodes=3"], "ray.nodes: unknown key; allowed: ray.workers, ray.cpus_per_worker"),
    (["--set", "iteratons=300"], "iteratons: unknown key; did you mean 'iterations'? allowed: method, alpha"),
    (["--set", "method=mamll"], "method: unknown method 'mamll'; did you mean 'maml'? allowed: adam, fomaml"),
    (["--set", "train.compile=allways"], "train.compile: unknown choice 'allways'; did you mean 'always'? allowed: "
                                         "auto, always, never, graphs"),
    (["--set", "task.name=sinusiod"], "task.name: unknown task 'sinusiod'; did you mean 'sinusoid'? allowed: "),
]


@pytest.mark.parametrize("args,message", BAD, ids=[a[1] for a, _ in BAD])
def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "runs"
    code = main(["train", "sine_quick", "--set", f"output_dir={out}", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("metatrain: error: ")
    assert message in err
    assert not out.exists()


def test_bad_yaml_key_and_missing_file(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("method: maml\ntask: {name: sinusoid, shotz: 5}\n")
    assert main(["train", str(cfg)]) == 2
    assert "task.shotz: unknown key" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "sine_quick" in err
    assert list(tmp_path.iterdir()) == [cfg]


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"precious")
    assert main(["train", "sine_quick", "--set", f"output_dir={tmp_path}", "--set", "run_name=r"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == b"precious"


def test_every_float_key_is_checked_for_finiteness():
    """The finiteness check is generic: every float field of every section is refused as inf / nan."""
    from pipeline.config import Config, ConfigError, load_config
    from pipeline.yaml_dataclasses import float_fields

    keys = [k for k, _ in float_fields(Config())]
    assert {"alpha", "beta", "gumbel_temperature", "model.init_std", "train.grad_clip",
            "ray.cpus_per_worker", "ray.gpus_per_worker"} <= set(keys)
    for key in keys:
        for bad in (float("inf"), float("-inf"), float("nan")):
            with pytest.raises(ConfigError, match=rf"^{key}: must be a finite number, got"):
                load_config(None, {key: bad})


def test_a_damaged_run_config_is_one_line(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_bytes(b"\xff\xfe\x00garbage\x81")
    for cmd in ("resume", "eval"):
        assert main([cmd, str(run), "--local"]) == 2
        err = capsys.readouterr().err
        assert (err.count("\n") == 1
                and f"config: {run / 'config.yaml'} cannot be read as text (UnicodeDecodeError" in err)


def test_every_argument_of_every_command_has_help_text():
    import argparse

    from pipeline.cli import build_parser

    missing = []

    def walk(parser, path):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, [*path, name])
            elif a.dest != "help" and not a.help:
                missing.append(f"metatrain {' '.join(path)} {'/'.join(a.option_strings) or a.dest}")

    walk(build_parser(), [])
    assert not missing, missing


def test_a_mistyped_config_name_suggests_the_closest_of_its_kind(tmp_path, capsys):
    """train lists only experiment configs, sweep only sweep files; each names the closest."""
    assert main(["train", "sine_quik"]) == 2
    err = capsys.readouterr().err
    assert "no such file 'sine_quik'; did you mean 'sine_quick'? shipped experiment configs: " in err
    assert "sine_mtnet" in err and "sine_models" not in err and "robustness_alpha" not in err  # no sweep files
    assert main(["sweep", "sine_modles"]) == 2
    err = capsys.readouterr().err
    assert "no such file 'sine_modles'; did you mean 'sine_models'? shipped sweep files: " in err
    assert "robustness_alpha" in err and "sine_quick" not in err  # no experiment configs
    assert main(["train", "zzzz"]) == 2
    assert "did you mean" not in capsys.readouterr().err  # nothing close: no guess


def test_a_mistyped_command_or_choice_names_the_closest(capsys):
    for argv, hint in ((["traun", "sine_quick"], "invalid choice: 'traun'; did you mean 'train'?"),
                       (["jobs", "lst"], "invalid choice: 'lst'; did you mean 'list'?"),
                       (["data", "pack", "omniglott", "--src", "x", "--out", "y.arrow"],
                        "invalid choice: 'omniglott'; did you mean 'omniglot'?")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert hint in capsys.readouterr().err


def test_run_dir_mistakes_are_named(tmp_path, capsys):
    """A run directory that does not exist says so (with the closest run beside it); a sweep
    directory points to its trials/."""
    run = tmp_path / "my-sine"
    run.mkdir()
    (run / "config.yaml").write_text("method: maml\n")
    for cmd in ("eval", "resume", "adapt", "export"):
        extra = ["--support", "s.csv", "--query", "q.csv"] if cmd == "adapt" else []
        assert main([cmd, str(tmp_path / "my-sin"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert f"RUN_DIR: {tmp_path / 'my-sin'} does not exist; did you mean '{run}'?" in err, err
    assert main(["eval", str(tmp_path / "nothing-like-it")]) == 2
    assert "does not exist; a run is a folder with a config.yaml" in capsys.readouterr().err
    sweep = tmp_path / "my_sweep"
    (sweep / "trials" / "t0").mkdir(parents=True)
    (sweep / "trials" / "t0" / "config.yaml").write_text("method: maml\n")
    (sweep / "sweep.yaml").write_text("base: sine_quick\n")
    assert main(["eval", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert f"{sweep} is a sweep directory; its runs are the folders in {sweep / 'trials'}, e.g. " \
           f"{sweep / 'trials' / 't0'}" in err
