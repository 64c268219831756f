"""`ascend-adapt analyze MODEL.onnx --soc SOC`: would ATC take this ONNX file? (light: no onnx at import)."""

from __future__ import annotations

import click

from ..errors import ConfigError


def parse_input_shapes(text: str | None) -> dict[str, tuple[int, ...]] | None:
    """Parse ATC's `--input_shape` syntax with static dims: "input_ids:1,128;attention_mask:1,128".

    The grammar is the one of `om_convert.atc.gearspec.parse_input_shape` (ATC's E10002 on bad
    text); -1 and `lo~hi` are refused here because analyze needs one static shape per input.
    """
    if not text:
        return None
    from ascend_adapt.om_convert.atc.gearspec import parse_input_shape

    out: dict[str, tuple[int, ...]] = {}
    for name, dims in parse_input_shape(text).items():
        bad = [str(d) for d in dims if not isinstance(d, int) or d < 0]
        if bad:
            raise ConfigError(f"--input-shape entry '{name}:{','.join(str(d) for d in dims)}': '{bad[0]}' is not a "
                              "static dim", "gears and ranges (-1, lo~hi) are not static shapes; give one static "
                              'shape, e.g. "input_ids:1,128;attention_mask:1,128"')
        out[name] = tuple(dims)
    return out


@click.command("analyze")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--soc", required=True, help="Target name or soc_version, e.g. Ascend310P3, Ascend310, MLU370.")
@click.option("--cann", "cann_version", default=None, help="CANN (toolchain) version, e.g. 6.0 or 8.0.RC2 "
                                                           "[default: the target's].")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--no-rules", is_flag=True, help="Do not try the rewrite rules (no 'fixable' status).")
@click.option("--input-shape", "input_shape", default=None,
              help='Fix dynamic inputs, ATC syntax: "input_ids:1,128;attention_mask:1,128".')
def analyze_cmd(model, soc, cann_version, fmt, no_rules, input_shape):
    """Check MODEL's ops, opsets, dtypes and shapes against the target's ATC op table (no CANN needed).

    Exit status: 0 when the model is accepted as is or after the available rewrite rules, 1 when
    it is not, 2 on errors. The check is simulated from data files; the real ATC has the last word.
    """
    from ascend_adapt.om_convert.analyze import analyze_model

    report = analyze_model(model, soc, cann_version, rules=not no_rules,
                           input_shapes=parse_input_shapes(input_shape))
    click.echo(report.render(fmt))
    raise SystemExit(report.exit_code)
