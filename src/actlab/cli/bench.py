"""``actlab bench``: decode tokens/s of a sparsity plan vs dense, measured in one run."""

from __future__ import annotations

from pathlib import Path

import typer

from actlab.cli import checks
from actlab.cli.common import cli_errors, console, fail, print_json, quiet_libraries


def bench(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model: alias, directory, .gguf, random:<preset> or hub id."),
    plan: Path = typer.Option(None, "--plan", help="A plan directory from `actlab calibrate`, or a Hub repo id (owner/name)."),
    method: str = typer.Option(None, "--method", help="Or calibrate one now: teal, wina, chess, cats, cett."),
    sparsity: float = typer.Option(None, "--sparsity", "-s", help="With --method: model-wide target sparsity."),
    allocation: str = typer.Option("uniform", "--allocation", "-a", help="With --method teal/wina: uniform, greedy or global."),
    data: str = typer.Option("default", "--data", "-d", help="Corpus for the prompt (and for calibration with --method)."),
    calib_tokens: int = typer.Option(4096, "--calib-tokens", help="With --method: calibration tokens."),
    new_tokens: int = typer.Option(64, "--new-tokens", "-n", help="Tokens decoded per measurement."),
    prompt_tokens: int = typer.Option(32, "--prompt-tokens", help="Prompt length (from the corpus's eval split)."),
    threads: int = typer.Option(2, "--threads", "-t", help="Threads for torch and the kernels."),
    reps: int = typer.Option(5, "--reps", help="Timed rounds (dense, sparse, HF interleaved); medians reported."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed rounds first."),
    no_hf: bool = typer.Option(False, "--no-hf", help="Skip the HF transformers generate baseline."),
    weights: str = typer.Option("fp32", "--weights", "-w", help="Weight format of the actlab runs, dense and sparse alike: fp32, bf16, int8 (Q8_0 blocks) or int4 (Q4_1 blocks; lm_head in int8), quantised from fp32 when applied."),
    engine: str = typer.Option("auto", "--engine", "-e", help="Decode loop: native (one C call per token), torch (the HF modules), or auto: native where the model allows it."),
    against: str = typer.Option(None, "--against", help="Also time another engine on the same prompt: llamacpp (needs the llamacpp extra) at the matching format: fp32 F32, bf16 F16, int8 Q8_0, int4 Q4_1."),
    gguf: Path = typer.Option(None, "--gguf", help="With --against llamacpp: this GGUF file instead of the one made for the model and format."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Measure decode speed: actlab engine dense vs sparse kernels vs HF generate dense (and llama.cpp).

    The three variants run interleaved on one model object (the plan's kernel modules are swapped
    in for the sparse runs and out again), each reporting its median tokens/s after warm-up. Also
    reported: the memory-traffic ceiling of the plan (dense bytes / bytes still read per token) and
    the fraction of it reached, and the peak resident memory.

    Example:

        actlab bench --model smollm2-135m --method teal --sparsity 0.5 --threads 2 --json

        actlab bench -m smollm2-135m --method teal -s 0.5 --weights int8 --against llamacpp
    """
    if (plan is None) == (method is None):
        fail("give exactly one of --plan DIR or --method NAME --sparsity S")
    if method is not None and sparsity is None:
        fail("--method needs --sparsity")
    checks.at_least("--new-tokens", new_tokens, 2)
    checks.at_least("--prompt-tokens", prompt_tokens, 1)
    checks.at_least("--reps", reps, 1)
    checks.at_least("--warmup", warmup, 0)
    checks.at_least("--threads", threads, 1)
    checks.at_least("--calib-tokens", calib_tokens, 1)
    checks.fraction("--sparsity", sparsity)
    checks.plan_dir(plan)
    checks.corpus(data)
    from actlab.engine.bench import ENGINES
    from actlab.kernels.quant import WEIGHT_FORMATS

    checks.one_of("--weights", weights, WEIGHT_FORMATS)
    checks.one_of("--engine", engine, ENGINES)
    if against is not None:
        checks.one_of("--against", against, ("llamacpp",))
    if gguf is not None and against is None:
        fail("--gguf needs --against llamacpp")
    if gguf is not None and not gguf.is_file():
        fail(f"--gguf {gguf}: no such file; give a .gguf file or leave --gguf out")
    with cli_errors():
        import actlab
        from actlab.data.windows import make_windows
        from actlab.engine.plan_bench import bench_plan, calibrate_at_sparsity, check_calibratable
        from actlab.kernels import ops
        from actlab.sparsity.config import config_from_dict

        quiet_libraries()
        the_plan = actlab.SparsityPlan.from_pretrained(plan) if plan is not None else None
        extra = {"allocation": allocation} if method in ("teal", "wina") else {}
        if method is not None:  # an unknown method or field is refused before the model loads
            check_calibratable(method)
            config_from_dict({"method": method, **extra})
        if the_plan is not None and any(e.rotation is not None for e in the_plan.entries):
            fail(f"{plan} is a rotated plan (--rotate): it runs on the masking path only, which bench does not "
                 "time; calibrate without --rotate to benchmark the kernels")
        if against == "llamacpp":
            from actlab.engine.llamacpp import llamacpp_available

            missing = llamacpp_available()
            if missing is not None:
                fail(f"--against llamacpp: {missing}")
        net, tok = actlab.load_model(model)
        if the_plan is not None:
            actlab.check_plan(net, the_plan, kernels=True)
        corpus = actlab.load_corpus(data)
        if the_plan is None:
            console.print(f"calibrating {method} at {sparsity:.0%} on {calib_tokens} tokens", highlight=False)
            calib = make_windows(corpus, tok, 256, calib_tokens, split="calib")
            # each method gets the target in its own terms (cett: the CETT target that reaches it)
            the_plan = calibrate_at_sparsity(net, method, sparsity, calib, **extra)
            if the_plan.config.knob != "sparsity":
                console.print(f"{method}: {the_plan.config.knob} = {the_plan.config.knob_value():.4g} gives "
                              f"{the_plan.metrics['sparsity_model_wide']:.1%} model-wide", highlight=False)
        prompt = make_windows(corpus, tok, prompt_tokens, prompt_tokens, split="eval")[:1]
        if not ops.available():
            console.print("[yellow]warning:[/] compiled kernels unavailable: the sparse runs use the PyTorch reference")
        gguf_file = None
        if against == "llamacpp":
            from actlab.engine.llamacpp import gguf_for
            from actlab.engine.plan_bench import LLAMACPP_FORMAT

            gguf_file = gguf if gguf is not None else gguf_for(model, LLAMACPP_FORMAT[weights])
        console.print(f"benchmarking {model}: {reps} rounds x {new_tokens} tokens, {threads} threads, "
                      f"{weights} weights", highlight=False)
        result = bench_plan(net, the_plan, prompt, new_tokens=new_tokens, reps=reps, warmup=warmup,
                            num_threads=threads, hf=not no_hf, weights=weights, engine=engine,
                            llamacpp=None if gguf_file is None else str(gguf_file))
        if result["native_unsupported"]:
            console.print(f"note: torch engine: the native one cannot run this model ({result['native_unsupported']})",
                          highlight=False)
    result.update(model=model, method=the_plan.method, kernels=ops.isa() if ops.available() else "reference")
    if json_out:
        print_json(result)
        return
    hf = f"{result['tok_s_hf_dense']:.1f}" if result["tok_s_hf_dense"] else "-"
    console.print(
        f"dense {result['tok_s_dense']:.1f} tok/s · sparse {result['tok_s_sparse']:.1f} tok/s · HF dense {hf} tok/s\n"
        f"speedup {result['speedup']:.2f}x (vs HF {result['speedup_vs_hf'] or float('nan'):.2f}x) · "
        f"ceiling {result['ceiling']:.2f}x, reached {result['ceiling_frac']:.0%} · peak RSS {result['peak_rss_mb']:.0f} MB",
        highlight=False,
    )
    if result.get("tok_s_llamacpp"):
        console.print(
            f"llama.cpp {result['tok_s_llamacpp']:.1f} tok/s ({Path(result['llamacpp_gguf']).name}) · "
            f"sparse {result['vs_llamacpp']:.2f}x llama.cpp · dense {result['dense_vs_llamacpp']:.2f}x",
            highlight=False,
        )
