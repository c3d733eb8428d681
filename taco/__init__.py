"""The `taco` command line: the package on top of the others.

It parses arguments into the parts' typed configs and calls them; each part (`policies`, `verifiers`,
`runtime`, `sim`, `ros_nodes`) contributes its own subcommands from its `commands` module, and
third-party packages add theirs under the `taco.commands` entry point group. No part imports it.
"""
