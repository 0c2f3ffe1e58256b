"""Every Redis key name call-ledger builds, in one place.

Layout (prefix `cl` by default, LEDGER_KEY_PREFIX):

    cl:events                  stream of normalised events (intake XADDs, workers XREADGROUP); with
                               LEDGER_STREAM_SHARDS=K one per shard, cl:events:{<tag>} (call_ledger.store.shards)
    cl:dead                    dead-letter stream: events that could not be applied, with the reason
                               (per shard: cl:dead:{<tag>}), kept LEDGER_DLQ_RETENTION_DAYS
    cl:failures                hash: stream entry id -> why its last apply failed (until acked; per shard)
    cl:streams                 set: every stream shard key ever written, what workers consume
    cl:durability-check        string: the write WAITAOF waits for at start-up (LEDGER_DURABLE_ACK=aof)
    cl:ids                     counter that hands out record ids (each value made opaque: call_ledger.core.record_ids)
    {cl:ids}:fence             the replication id of the node that last advanced cl:ids (call_ledger/store/lua/ids.lua)
    {cl:ids}:key               the random key that makes counter values opaque record ids
    cl:layout                  the version of this layout: "2"; "3" (the same with the order index's and
                               journal's members short: call_ledger.core.members); "4" (3 with the call
                               hash's core as plain fields, no `s` and no `j`: call_ledger.core.plain);
                               moved on by `call-ledger layout --upgrade`; start-up refuses another
    cl:call:{<sid>}            hash: id, v (events applied), s (the core state JSON: status, times,
                               costs, provider, call_meta size, the fixed telephony estimate),
                               r:<register> and m:<call_meta key> -> [occurred_us, event_id, source,
                               value] (layout 3: the event as its short member, [us, ".-3", "0", value]:
                               call_ledger.core.members), j (the record rendered at commit, call_meta left `{}`:
                               call_ledger.core.served). Layout 4: the core as st, sa, an, du, fs, pv,
                               c:<component>, mk, mb, es, cu (call_ledger.core.plain) in place of s; no j,
                               a terminal call's rh (the record's digest) in its place. The
                               outbound messages' finality (SPEC §15, docs/outbound.md): fe "1" once
                               `call.ended` is announced, fr the finality revision (absent: not
                               finalized, 1 finalized, >= 2 revised),
                               lc ms of the last commit that changed the record of the terminal call,
                               ob "1" while its outbox holds messages not yet fanned out
    cl:out:{<sid>}             hash: the call's outbox: message id -> message JSON (commit.lua and
                               finalize.lua write it in the commit that makes the change; fan-out
                               empties it: call_ledger.store.outbox)
    cl:journal:{<sid>}         hash: the event's order member -> the applied event in the journal's
                               form (call_ledger.core.journal: what the key, the order score and the call do
                               not say; an entry of an earlier version is the event's JSON, and
                               reads as it is); not written with LEDGER_JOURNAL=off
    cl:order:{<sid>}           sorted set: <source>:<event_id> (in layout 3 its short form:
                               call_ledger.core.members) scored by occurred_us: every applied event
                               (what recognises a duplicate), the journal in time order (ties by
                               key), paged by rank from a cursor key
    cl:sig:<identity>          the signature ledger: the params digest (32 bytes) of a provider signature,
                               expiring after LEDGER_SIGNATURE_TTL_S (call_ledger.store.signatures)
    cl:wh:endpoints            hash: webhook endpoint id -> the endpoint's JSON (url, events, organization,
                               secrets newest first: call_ledger.core.endpoints), SPEC §15

The call hash stays small whatever the call's history (the journal is elsewhere, call_meta is
bounded), so a lookup reads it whole; a commit writes its core, the journal entries and the
fields its events won, never a rewrite of everything. The `{<sid>}` hash tag puts a call's
four keys (hash, journal, order, outbox) on one Redis Cluster slot, so one script commits them
atomically. Records never name the stream, so the stream can be sharded without touching them. The signature ledger is
keyed by the signature itself, not by call: a re-split can change the call id.

The calls API's indexes (SPEC §9, §10), per index shard n in 0..15 (`call_ledger.core.indexes.SHARDS`);
a call's entry lives in shard crc32(call_sid) % 16, and every key of a shard shares the hash tag
`{n}`, so one script updates one call's entry atomically on a Redis Cluster too:

    cl:ix:{n}:e                      hash: record id (16 digits) -> the call's entry: its payload
                                     (what readers use; layout 5: lean, alone), before layout 5
                                     followed by a newline and [memberships, increments, score]
    cl:ix:{n}:v                      hash: record id -> the call's version the entry is of
    cl:ix:{n}:z:<scope>:<filter>     sorted set: record ids scored by list time (µs);
                                     scope `*` (every call) or `o<org>`; filter '', s=<status>,
                                     a=<assistant_id>, or s=<status>|a=<assistant_id>
    cl:ix:{n}:t:<scope>              hash: the scope's totals (n, s:<status>, c, f, d, dn, cw, cf, cn)
    cl:ix:{n}:d:<scope>:<YYYY-MM-DD> hash: the same per UTC day of list time
    cl:ix:{n}:da:<scope>:<YYYY-MM-DD> hash: per assistant that day: a:<aid>:<field> (n, d, cw,
                                     cf, cn); versions before issue #23 also counted names,
                                     an:<aid>:<name>, until `call-ledger reindex`
    cl:ix:{n}:w:<scope>:<monday>     hash: the same per-assistant fields per ISO week
    cl:ix:{n}:m:<scope>:<YYYY-MM>    hash: the same per-assistant fields per calendar month
    cl:ix:months                     string: set when every entry has month rollups (see
                                     IndexStore.months_complete)

The outbound messages' schedules, per index shard n (the call's `shard_of`, as above):

    cl:ob:{n}                        sorted set: calls whose outbox has messages to fan out; score = ms
                                     when due (a fan-out claim pushes it by a lease)
    cl:fin:{n}                       sorted set: terminal calls waiting to be finalized; score = ms when
                                     due (lc + LEDGER_FINALIZE_AFTER_S)
    cl:arc:{n}                       sorted set: finalized calls, the archive's candidates (SPEC §16); score =
                                     0 until a pass has read the call, then its ended_at (ms)

The archive (SPEC §16; call_ledger.store.archive, docs/archive.md). An archived call's hash is its
tombstone, `{a: "<file no>.<row>"}`; while a pass holds it, its hash is whole and `a` is "@<pass id>"
(commits refuse it: `call_archived`):

    {cl:archive}:lock                string: the token of the process running a pass (expires)
    {cl:archive}:pass                hash: the pass under way: id, at (archived_at, µs), state, files
    {cl:archive}:batch               hash: the pass's calls: sid -> record id, then "<record id> <file no>.<row>"
    {cl:archive}:files               hash: file no -> the calls file's path under LEDGER_ARCHIVE_URL
    {cl:archive}:seq                 counter: file numbers
    (one hash tag: a write to the pass is checked against the lock in the same script, archive_fenced.lua)
    cl:ix:{n}:ac:<scope>:<filter>    hash: per list (as `z:`), UTC day number of list time -> the calls of that
                                     day archived from it: what `count` adds to the list's ZCOUNT
    cl:ix:{n}:gone                   sorted set: record ids archived lately -> when (ms): their indexed version
                                     is 2^53 - 1 until a grace period ends (archive_unindex.lua)

The part of an index key after its shard's base (`z:...`, `t:...`, `d:...`) is the index's own
vocabulary (call_ledger.core.indexes builds those suffixes; index.lua writes them under the base).
Readers merge the shards: a list page is a k-way merge of each shard's next items, a count or a
rollup a sum. Indexes are derived from committed records by the worker after each commit (and on
each duplicate delivery, which repairs an update lost to a crash); they may lag a record briefly,
never diverge.

Outbound deliveries (SPEC §15; call_ledger.store.deliveries), per webhook endpoint: every key of
an endpoint shares the hash tag `{<endpoint id>}`, so one script claims or settles a message atomically:

    cl:wh:{<ep>}:msg           hash: message id -> the delivery's JSON (the body, its type, call, creation
                               time, attempts so far, state, the lease of the process sending it)
    cl:wh:{<ep>}:due           sorted set: pending message id -> when it is next tried (ms); a claim pushes
                               it by a lease, so no two processes send one message at once
    cl:wh:{<ep>}:pending       sorted set: pending message id -> created (ms): the oldest-pending-age metric
    cl:wh:{<ep>}:created       sorted set: every kept message id -> created (ms): recover, retention
    cl:wh:{<ep>}:log           stream: one entry per attempt (the attempts route), MAXLEN ~ 10000

Scripts get every key they touch through KEYS (computed here), except index.lua, which also
writes the rollup keys named after the shard's base passed in ARGV.
"""

from dataclasses import dataclass

# The layouts this version reads (`cl:layout`): 2; 3, which is 2 with the order index's and the journal's
# members in their short form (call_ledger.core.members); 4, which is 3 with a call's core state as plain
# hash fields and no rendered record (call_ledger.core.plain). A store moves to a later layout with its
# workers running, by `call-ledger layout --upgrade` (call_ledger.store.layout); a version that does not read
# a store's layout refuses it at start (call_ledger.store.records.Records.check_layout). 5 is 4 with the
# calls API's index entries as their payload alone (call_ledger.core.indexes.IndexEntry.encode), which
# the index script of a release before it cannot undo.
LAYOUT = "2"
SHORT_LAYOUT = "3"
PLAIN_LAYOUT = "4"
PAYLOAD_INDEX_LAYOUT = "5"
LAYOUTS = (LAYOUT, SHORT_LAYOUT, PLAIN_LAYOUT, PAYLOAD_INDEX_LAYOUT)
NEWEST_LAYOUT = LAYOUTS[-1]


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names under one prefix. Prefixes hold no braces (Settings.key_prefix), so a hash
    tag built here is always the one intended."""

    prefix: str = "cl"

    # -- the streams (per shard: call_ledger.store.shards) ------------------------------------

    @property
    def events(self) -> str:
        """The unsharded event stream (K = 1), and the prefix of the sharded ones."""
        return f"{self.prefix}:events"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def failures(self) -> str:
        return f"{self.prefix}:failures"

    def shard_events(self, tag: str) -> str:
        """A shard's stream: `cl:events:{<tag>}`."""
        return f"{self.events}:{{{tag}}}"

    def shard_tag_of(self, stream: str) -> str:
        """The `{<tag>}` part of a sharded stream key (as written, braces included)."""
        return stream.removeprefix(f"{self.events}:")

    def shard_dead(self, braced_tag: str) -> str:
        return f"{self.dead}:{braced_tag}"

    def shard_failures(self, braced_tag: str) -> str:
        return f"{self.failures}:{braced_tag}"

    @property
    def streams(self) -> str:
        """The registry of every stream shard key ever written."""
        return f"{self.prefix}:streams"

    @property
    def durability_check(self) -> str:
        return f"{self.prefix}:durability-check"

    # -- record ids and the layout --------------------------------------------------------------

    @property
    def ids(self) -> str:
        return f"{self.prefix}:ids"

    @property
    def ids_fence(self) -> str:
        """The id counter's fence: `{cl:ids}:fence` hashes like `cl:ids` (call_ledger/store/lua/ids.lua
        needs both in one slot)."""
        return f"{{{self.ids}}}:fence"

    @property
    def ids_key(self) -> str:
        """The key of the ids' permutation, in the counter's slot like its fence."""
        return f"{{{self.ids}}}:key"

    @property
    def layout(self) -> str:
        return f"{self.prefix}:layout"

    # -- one call -------------------------------------------------------------------------------

    @property
    def call_prefix(self) -> str:
        """What every call hash's key starts with (`cl:call:`): reindex scans `cl:call:{*}`."""
        return f"{self.prefix}:call:"

    def call(self, call_sid: str) -> str:
        return f"{self.call_prefix}{{{call_sid}}}"

    def journal(self, call_sid: str) -> str:
        return f"{self.prefix}:journal:{{{call_sid}}}"

    def order(self, call_sid: str) -> str:
        return f"{self.prefix}:order:{{{call_sid}}}"

    def outbox(self, call_sid: str) -> str:
        """The call's outbox (`cl:out:{<sid>}`): in the call's slot, so the commit writes it atomically."""
        return f"{self.prefix}:out:{{{call_sid}}}"

    def signature(self, identity: str) -> str:
        return f"{self.prefix}:sig:{identity}"

    # -- outbound call events (SPEC §15) -----------------------------------------------------------

    @property
    def endpoints(self) -> str:
        """Every webhook endpoint, one hash (a few per organization: read whole, by the routes and delivery)."""
        return f"{self.prefix}:wh:endpoints"

    # -- the calls API's indexes ------------------------------------------------------------------

    def index_base(self, shard: int) -> str:
        """What every key of an index shard starts with: `cl:ix:{n}:`."""
        return f"{self.prefix}:ix:{{{shard}}}:"

    def index_entries(self, shard: int) -> str:
        return self.index_base(shard) + "e"

    def index_versions(self, shard: int) -> str:
        return self.index_base(shard) + "v"

    def index_gone(self, shard: int) -> str:
        return self.index_base(shard) + "gone"

    @property
    def index_months(self) -> str:
        return f"{self.prefix}:ix:months"

    # -- the outbound messages' schedules (per index shard) ------------------------------------------

    def outbox_due(self, shard: int) -> str:
        """`cl:ob:{n}`: calls with outbox messages to fan out, by when due."""
        return f"{self.prefix}:ob:{{{shard}}}"

    def finalize_due(self, shard: int) -> str:
        """`cl:fin:{n}`: terminal calls waiting to be finalized, by when due."""
        return f"{self.prefix}:fin:{{{shard}}}"

    # -- the archive (SPEC §16; call_ledger.store.archive) --------------------------------------------

    def archive_due(self, shard: int) -> str:
        """`cl:arc:{n}`: finalized calls, the archive's candidates (in the index shard's slot)."""
        return f"{self.prefix}:arc:{{{shard}}}"

    @property
    def archive_lock(self) -> str:
        """`{cl:archive}:lock`; the pass's keys share its hash tag (archive_fenced.lua checks the lock)."""
        return f"{{{self.prefix}:archive}}:lock"

    @property
    def archive_pass(self) -> str:
        return f"{{{self.prefix}:archive}}:pass"

    @property
    def archive_batch(self) -> str:
        return f"{{{self.prefix}:archive}}:batch"

    @property
    def archive_files(self) -> str:
        return f"{{{self.prefix}:archive}}:files"

    @property
    def archive_seq(self) -> str:
        return f"{{{self.prefix}:archive}}:seq"

    # -- outbound deliveries (call_ledger.store.deliveries) -----------------------------------------

    def delivery_base(self, endpoint_id: str) -> str:
        """What every delivery key of an endpoint starts with: `cl:wh:{<ep>}:`."""
        return f"{self.prefix}:wh:{{{endpoint_id}}}:"

    def delivery_messages(self, endpoint_id: str) -> str:
        return self.delivery_base(endpoint_id) + "msg"

    def delivery_due(self, endpoint_id: str) -> str:
        return self.delivery_base(endpoint_id) + "due"

    def delivery_pending(self, endpoint_id: str) -> str:
        return self.delivery_base(endpoint_id) + "pending"

    def delivery_created(self, endpoint_id: str) -> str:
        return self.delivery_base(endpoint_id) + "created"

    def delivery_log(self, endpoint_id: str) -> str:
        return self.delivery_base(endpoint_id) + "log"
