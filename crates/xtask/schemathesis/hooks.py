"""Schemathesis hooks for `cargo xtask test` (see crates/xtask/src/schemathesis.rs).

Path parameters: the ids `cargo xtask test` provisioned (a namespace, a key, a
member, an invitation, a top-up intent, ...) are passed in TALLY_ST_PATH_VALUES
as a JSON object. Each such parameter takes the provisioned value three times in
four, so the deep paths behind a namespace are reached, and the generated value
otherwise, so unknown ids (404) and malformed ones (400) are still tried.

Bodies: the OpenAI-compatible operations name the sandbox's model, and the
Playground the provisioned key, three times in four, for the same reason.

Catalog bodies: an upstream `url` that could parse as a URL is pointed at a
closed loopback port, so the server under test never connects anywhere but
this machine, whatever the generated catalog entry says.
"""

import json
import os

import schemathesis
from hypothesis import strategies as st

PATH_VALUES = json.loads(os.environ.get("TALLY_ST_PATH_VALUES", "{}"))
# Values that depend on the operation, keyed by "METHOD path-template".
PATH_VALUES_BY_OPERATION = json.loads(os.environ.get("TALLY_ST_PATH_VALUES_BY_OPERATION", "{}"))
LOOPBACK_UPSTREAM = "http://127.0.0.1:9"


def _known(context):
    operation = context.operation
    known = dict(PATH_VALUES)
    if operation is not None:
        known.update(PATH_VALUES_BY_OPERATION.get(f"{operation.method.upper()} {operation.path}", {}))
    return known


@schemathesis.hook
def flatmap_path_parameters(context, path_parameters):
    if not isinstance(path_parameters, dict):
        return st.just(path_parameters)
    known = _known(context)
    choices = {}
    for name, generated in path_parameters.items():
        if name in known:
            # sampled_from shrinks towards the first element: the provisioned value.
            choices[name] = st.sampled_from([known[name], known[name], known[name], generated])
        else:
            choices[name] = st.just(generated)
    return st.fixed_dictionaries(choices)


def _loopback_urls(value):
    if isinstance(value, dict):
        return {
            k: (LOOPBACK_UPSTREAM if k == "url" and isinstance(v, str) and ":" in v else _loopback_urls(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_loopback_urls(v) for v in value]
    return value


@schemathesis.hook
def map_body(context, body):
    operation = context.operation
    if operation is not None and "/admin/catalog" in operation.path:
        return _loopback_urls(body)
    return body


# The OpenAI-compatible operations route by the body's `model`: name the
# sandbox's model three times in four, so calls reach the sandbox and the
# ledger instead of stopping at 404 for an unknown model.
GATEWAY_MODEL_OPERATIONS = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}


# The Playground calls the gateway with one of the namespace's keys: name the
# provisioned key three times in four.
PLAYGROUND = "/api/v1/namespaces/{namespace_id}/playground"


@schemathesis.hook
def flatmap_body(context, body):
    operation = context.operation
    if operation is None or not isinstance(body, dict):
        return st.just(body)
    if operation.path in GATEWAY_MODEL_OPERATIONS and "model" in PATH_VALUES:
        return st.sampled_from([{**body, "model": PATH_VALUES["model"]}] * 3 + [body])
    if operation.path == PLAYGROUND and "key_id" in PATH_VALUES:
        return st.sampled_from([{**body, "key_id": PATH_VALUES["key_id"]}] * 3 + [body])
    return st.just(body)
