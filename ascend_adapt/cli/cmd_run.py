"""`ascend-adapt run`: run a converted artifact on inputs (simulator, card, onnxruntime: any backend of
the registry with a graph level)."""

from __future__ import annotations

import click

from ascend_adapt.backends import names


class _GraphBackends(click.Choice):
    """The registry's backends that run single graphs, read at each use (a backend registered
    after this module was imported is a valid choice too)."""

    def __init__(self):
        super().__init__([])

    @property
    def choices(self):
        return names(level="graph", aliases=True)

    @choices.setter
    def choices(self, _value):  # click.Choice.__init__ assigns it
        pass


@click.command("run")
@click.argument("artifact", type=click.Path(exists=True, path_type=str))
@click.option("--input", "inputs", multiple=True, help="NAME=FILE.npy (repeat): a .npy array of the graph input's dtype and shape (token ids in "
                   "[0, vocab)); missing inputs get random values.")
@click.option("--graph", default=None, help="Graph of a multi-graph artifact (prefill / decode).")
@click.option("--backend", type=_GraphBackends(), default="sim", show_default=True,
              help="A backend that runs single graphs (the registry's; ascend_adapt.backends).")
@click.option("--precision-mode", default=None, help="Override the artifact's precision mode (simulator).")
@click.option("--save", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Write every output as NAME.npy into this directory.")
@click.option("--seed", type=int, default=0, show_default=True)
def run_cmd(artifact, inputs, graph, backend, precision_mode, save, seed):
    """Run ARTIFACT (a convert output directory, .omsim, .om or .onnx) once and summarize its outputs."""
    from ascend_adapt.om_convert.run import parse_input_args, run_artifact

    res = run_artifact(artifact, inputs=parse_input_args(inputs), graph=graph, backend=backend,
                       precision_mode=precision_mode, save=save, seed=seed)
    click.echo(res.to_text())
