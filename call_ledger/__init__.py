"""call-ledger: an exact per-call cost ledger built from provider and platform webhooks.

The package is layered; each layer imports only the ones below it (the import-linter contracts in
pyproject.toml enforce it):

    call_ledger.cli                    composition: the command line
    call_ledger.app | .runtime         composition: the app of each role | the process runtime
    call_ledger.worker | .api          intake + apply loop | the read routes (top-level worker/, api/)
    call_ledger.web                    HTTP plumbing both share: middleware, connections, metrics, logs
    call_ledger.store | .archive       all of Redis: key names, scripts, the client, error mapping | the
                                       archive's files: where they live, Parquet in and out (SPEC §16)
    call_ledger.settings               the environment (LEDGER_*), read once per process
    call_ledger.core                   pure rules: events, money, pricing, the record, index entries
"""
