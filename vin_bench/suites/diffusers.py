"""What chunked attention buys a diffusers video transformer (issue 20): being written."""

OPT_IN = "being written (issue 20)"


def run(ctx) -> dict:
    raise NotImplementedError("the diffusers suite is being written")


def markdown(result: dict) -> str:
    return ""
