"""Every SQL statement of the search service, parameterised: no value is formatted in."""

from __future__ import annotations


def key_id(key: str, collection: str = "$1") -> str:
    """On Citus, the id of the image ``key`` of ``collection`` (SQL expressions): a hash
    of the pair cut to 63 bits, the row's distribution column (0004_citus.sql gives rows
    that came from one node the same). It places the row, and the primary key on it is
    what keeps a key unique. Named in a WHERE clause, it lets Citus route a look-up by key
    to the one shard that holds it instead of asking every shard."""
    return f"greatest(hashtextextended({key}, {collection}) & 9223372036854775807, 1)"


COLLECTION_BY_NAME = """
SELECT id, name, model_name, model_version, dimension, serving_version, created_at
FROM collections WHERE name = $1
"""

COLLECTIONS = """
SELECT id, name, model_name, model_version, dimension, serving_version, created_at
FROM collections ORDER BY name
"""

CREATE_COLLECTION = """
INSERT INTO collections (name, model_name, model_version, dimension)
VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO NOTHING
RETURNING id, name, model_name, model_version, dimension, serving_version, created_at
"""

DELETE_COLLECTION = "DELETE FROM collections WHERE id = $1"

COUNT_COLLECTIONS = "SELECT count(*) FROM collections"
# Any fixed number: CreateCollection calls take turns while they count.
LOCK_COLLECTION_CREATION = "SELECT pg_advisory_xact_lock(1734, 1)"

# The default collection always exists: deleting it empties and unbinds it instead.
EMPTY_COLLECTION = """
WITH gone AS (DELETE FROM images WHERE collection_id = $1 RETURNING 1),
     unbound AS (
         UPDATE collections
         SET model_name = NULL, model_version = NULL, dimension = NULL, serving_version = NULL
         WHERE id = $1 RETURNING 1)
SELECT count(*) FROM gone
"""

# Citus refuses a write to a reference table (collections) after a parallel read or
# write of the shards that reference it in one transaction: such a transaction goes
# shard by shard from its start.
SEQUENTIAL = "SET LOCAL citus.multi_shard_modify_mode TO 'sequential'"

DELETE_PROJECTIONS = "DELETE FROM projections WHERE collection_id = $1"

COUNT_IMAGES = "SELECT count(*) FROM images WHERE collection_id = $1"

# The per-collection metrics: one scan of images for the counts (docs/metrics.md has its
# cost), run in the background by search_service.metrics, never on a scrape.
COLLECTION_SUMMARIES = """
SELECT c.name,
       CASE WHEN EXISTS (SELECT 1 FROM projections p
                         WHERE p.collection_id = c.id AND p.state = 'building') THEN 'building'
            WHEN c.serving_version IS NOT NULL THEN 'ready'
            ELSE 'none' END AS state,
       coalesce(n.images, 0) AS images
FROM collections c
LEFT JOIN (SELECT collection_id, count(*) AS images FROM images GROUP BY collection_id) n
       ON n.collection_id = c.id
ORDER BY c.name
"""

BIND_MODEL = """
UPDATE collections SET model_name = $2, model_version = $3, dimension = $4
WHERE id = $1 AND model_name IS NULL
"""

COLLECTION_MODEL = "SELECT model_name, model_version, dimension FROM collections WHERE id = $1"

# A write holds the weakest row lock on its collection for its whole transaction; a fit
# takes FOR UPDATE before adding a version, so it waits for the writes in flight and
# every later write sees the new version (and writes its list entry too).
LOCK_FOR_WRITE = "SELECT 1 FROM collections WHERE id = $1 FOR KEY SHARE"
LOCK_FOR_NEW_VERSION = "SELECT 1 FROM collections WHERE id = $1 FOR UPDATE"

# The versions a write must add its list entries to, locked so that a fit cannot
# delete one under it (which failed the write with a foreign-key violation).
LIVE_VERSIONS_LOCKED = """
SELECT version FROM projections
WHERE collection_id = $1 AND state IN ('building', 'ready')
ORDER BY version
FOR KEY SHARE
"""

EXISTING = """
SELECT key, content_sha256, metadata FROM images
WHERE collection_id = $1 AND key = ANY($2::text[])
"""

# On Citus, statements on a batch of keys also name their ids ($3), which the store first
# asks the coordinator for (KEY_IDS, a query of no table): Citus prunes shards on an
# array parameter, not on an expression computed from one.
KEY_IDS = f"SELECT coalesce(array_agg({key_id('k')}), '{{}}') FROM unnest($2::text[]) AS k"  # noqa: S608
EXISTING_DISTRIBUTED = EXISTING.rstrip() + " AND id = ANY($3::bigint[])\n"

# A batch upserted straight from array parameters: a staging table would write every
# 16 KiB vector once more (into its own TOAST) before the real write (measured 1.3-1.8x
# slower at 4096-D).
UPSERT_IMAGES = """
INSERT INTO images AS i (collection_id, key, content_sha256, metadata, embedding)
SELECT $1, s.key, s.content_sha256, s.metadata, s.embedding
FROM unnest($2::text[], $3::bytea[], $4::jsonb[], $5::bytea[])
    AS s (key, content_sha256, metadata, embedding)
ON CONFLICT (collection_id, key) DO UPDATE
SET content_sha256 = EXCLUDED.content_sha256,
    metadata = EXCLUDED.metadata,
    embedding = EXCLUDED.embedding,
    updated_at = now()
RETURNING i.id, i.key, (i.xmax = 0) AS created
"""


# On Citus: a key whose hash another key already holds is neither written nor returned:
# the store refuses it. (Citus evaluates only immutable functions in DO UPDATE: the new
# updated_at is the proposed row's default, now().) Formatted from constants only.
UPSERT_IMAGES_DISTRIBUTED = f"""
INSERT INTO images AS i (id, collection_id, key, content_sha256, metadata, embedding)
SELECT {key_id("s.key")},
       $1, s.key, s.content_sha256, s.metadata, s.embedding
FROM unnest($2::text[], $3::bytea[], $4::jsonb[], $5::bytea[])
    AS s (key, content_sha256, metadata, embedding)
ON CONFLICT (id) DO UPDATE
SET content_sha256 = EXCLUDED.content_sha256,
    metadata = EXCLUDED.metadata,
    embedding = EXCLUDED.embedding,
    updated_at = EXCLUDED.updated_at
WHERE i.collection_id = EXCLUDED.collection_id AND i.key = EXCLUDED.key
RETURNING i.id, i.key, (i.xmax = 0) AS created
"""  # noqa: S608

# Whether migration 0004 distributed the tables (on a Citus coordinator): it is what took
# the identity off images.id, so that the store writes ids itself.
DISTRIBUTED = """
SELECT attidentity = '' FROM pg_attribute WHERE attrelid = 'images'::regclass AND attname = 'id'
"""

UPDATE_METADATA = """
UPDATE images SET metadata = $3, updated_at = now()
WHERE collection_id = $1 AND key = $2
"""
UPDATE_METADATA_DISTRIBUTED = UPDATE_METADATA.rstrip() + f" AND id = {key_id('$2')}\n"

CREATE_STAGING_LISTS = """
CREATE TEMPORARY TABLE staging_lists (
    version integer NOT NULL,
    list_id integer NOT NULL,
    image_id bigint NOT NULL,
    coarse float8[] NOT NULL
) ON COMMIT DROP;
ALTER TABLE staging_lists ALTER coarse SET STORAGE EXTERNAL
"""

DELETE_LIST_ENTRIES = "DELETE FROM image_lists WHERE image_id = ANY($1::bigint[])"

# Sorted by list so that each list's rows sit together on disk.
LISTS_FROM_STAGING = """
INSERT INTO image_lists (collection_id, version, list_id, image_id, coarse)
SELECT $1, s.version, s.list_id, s.image_id, cube(s.coarse)
FROM staging_lists s JOIN images i ON i.id = s.image_id
ORDER BY s.version, s.list_id, s.image_id
ON CONFLICT DO NOTHING
"""

LIVE_PROJECTIONS = """
SELECT version, state, dimensions, lists, fitted_on, fitted_at, bounded FROM projections
WHERE collection_id = $1 AND state IN ('building', 'ready')
ORDER BY version
"""

PROJECTION_STATE = "SELECT state FROM projections WHERE collection_id = $1 AND version = $2"

PROJECTION_MODEL = """
SELECT model, bounded FROM projections WHERE collection_id = $1 AND version = $2
"""

EMBEDDING_OF = "SELECT embedding FROM images WHERE collection_id = $1 AND key = $2"
EMBEDDING_OF_DISTRIBUTED = f"{EMBEDDING_OF} AND id = {key_id('$2')}"

IMAGE = """
SELECT key, content_sha256, metadata, created_at, updated_at, embedding
FROM images WHERE collection_id = $1 AND key = $2
"""
IMAGE_DISTRIBUTED = IMAGE.rstrip() + f" AND id = {key_id('$2')}\n"

DELETE_IMAGES = """
DELETE FROM images WHERE collection_id = $1 AND key = ANY($2::text[]) RETURNING key
"""
DELETE_IMAGES_DISTRIBUTED = """
DELETE FROM images WHERE collection_id = $1 AND key = ANY($2::text[]) AND id = ANY($3::bigint[])
RETURNING key
"""

# EXACT, step 1: every row of a version whose lower bound can still beat the best hit
# found so far, nearest bound first. Only the ids and bounds cross the wire (16 bytes a
# row), never a vector; the bound is computed twice only for the few rows that pass.
_BOUND_SCAN = """
SELECT l.image_id, l.coarse <-> (SELECT cube($3::float8[])) AS bound
FROM image_lists l {join}
WHERE l.collection_id = $1 AND l.version = $2 {filter}
  AND l.coarse <-> (SELECT cube($3::float8[])) <= $4
ORDER BY bound, l.image_id
"""
# The planner takes a third of the rows to pass `bound <= $4` (its default for a range
# on an expression); under 1% do. Priced as it is, the scan ships every row to the
# leader, so it stays serial; at its true cost it runs on the parallel workers.
PARALLEL_SCAN = "SET LOCAL parallel_tuple_cost = 0"
BOUND_SCAN = _BOUND_SCAN.format(join="", filter="")
BOUND_SCAN_FILTERED = _BOUND_SCAN.format(
    join="JOIN images i ON i.id = l.image_id", filter="AND i.metadata @> $5"
)

# EXACT without a lower-bound projection (a small collection): every vector, a part
# at a time in id order, re-ranked in the service.
_VECTORS_AFTER = """
SELECT id, key, metadata, embedding FROM images
WHERE collection_id = $1 AND id > $2 AND key IS DISTINCT FROM $3 {filter}
ORDER BY id LIMIT $4
"""
VECTORS_AFTER = _VECTORS_AFTER.format(filter="")
VECTORS_AFTER_FILTERED = _VECTORS_AFTER.format(filter="AND metadata @> $5")

# FAST, step 1: the probed lists' rows ordered by the projected cube's distance (<->),
# the nearest `candidates` of them.
FAST_CANDIDATES = """
SELECT image_id FROM image_lists
WHERE collection_id = $1 AND version = $2 AND list_id = ANY($3::int[])
ORDER BY coarse <-> (SELECT cube($4::float8[]))
LIMIT $5
"""

# FAST, step 2: a part of the candidates with their float32 vectors, which the service
# re-ranks exactly (half the bytes of the cube chunks, so more of them stay cached).
_CANDIDATE_VECTORS = """
SELECT key, metadata, embedding FROM images
WHERE id = ANY($1::bigint[]) AND key IS DISTINCT FROM $2 {filter}
"""
CANDIDATE_VECTORS = _CANDIDATE_VECTORS.format(filter="")
CANDIDATE_VECTORS_FILTERED = _CANDIDATE_VECTORS.format(filter="AND metadata @> $3")

# -- Projection fitting --------------------------------------------------------

SAMPLE_EMBEDDINGS = """
SELECT embedding FROM images TABLESAMPLE BERNOULLI ($2)
WHERE collection_id = $1
LIMIT $3
"""

NEXT_PROJECTION_VERSION = """
SELECT coalesce(max(version), 0) + 1 FROM projections WHERE collection_id = $1
"""

INSERT_PROJECTION = """
INSERT INTO projections (collection_id, version, state, dimensions, lists, fitted_on, model)
VALUES ($1, $2, 'building', $3, $4, $5, $6)
"""

# A fit's list entries, computed in the service, wait here until the version is published.
CREATE_REFIT_LISTS = """
CREATE TEMPORARY TABLE IF NOT EXISTS refit_lists (
    list_id integer NOT NULL, image_id bigint NOT NULL, coarse float8[] NOT NULL)
"""
TRUNCATE_REFIT_LISTS = "TRUNCATE refit_lists"
DROP_REFIT_LISTS = "DROP TABLE IF EXISTS refit_lists"

# An image written since the fit read it already has its (newer) entry: keep that one.
PUBLISH_LISTS = """
INSERT INTO image_lists (collection_id, version, list_id, image_id, coarse)
SELECT $1, $2, r.list_id, r.image_id, cube(r.coarse)
FROM refit_lists r JOIN images i ON i.id = r.image_id
ORDER BY r.list_id, r.image_id
ON CONFLICT DO NOTHING
"""

EMBEDDINGS_AFTER = """
SELECT id, embedding FROM images
WHERE collection_id = $1 AND id > $2
ORDER BY id LIMIT $3
"""

PUBLISH_PROJECTION = """
WITH ready AS (
    UPDATE projections SET state = 'ready' WHERE collection_id = $1 AND version = $2
)
UPDATE collections SET serving_version = $2 WHERE id = $1
"""

RETIRE_PROJECTIONS = """
UPDATE projections SET state = 'retired'
WHERE collection_id = $1 AND version < $2 AND state <> 'retired'
"""

DELETE_RETIRED_LISTS = """
DELETE FROM image_lists
WHERE ctid = ANY (ARRAY(
    SELECT l.ctid FROM image_lists l JOIN projections p USING (collection_id, version)
    WHERE l.collection_id = $1 AND p.state = 'retired' LIMIT $2))
"""

# A ctid names a row within one shard only: on Citus a batch is named by its rows' keys.
DELETE_RETIRED_LISTS_DISTRIBUTED = """
DELETE FROM image_lists
WHERE collection_id = $1 AND (image_id, version) IN (
    SELECT l.image_id, l.version
    FROM image_lists l JOIN projections p USING (collection_id, version)
    WHERE l.collection_id = $1 AND p.state = 'retired' LIMIT $2)
"""

DELETE_RETIRED_PROJECTIONS = """
DELETE FROM projections WHERE collection_id = $1 AND state = 'retired'
"""

ABANDON_PROJECTION = "DELETE FROM projections WHERE collection_id = $1 AND version = $2"

ANALYZE_LISTS = "ANALYZE image_lists"

FIT_LOCK = "SELECT pg_try_advisory_lock($1, $2)"
FIT_UNLOCK = "SELECT pg_advisory_unlock($1, $2)"

# -- Schema migrations (search_service.schema) -----------------------------------

MIGRATION_LOCK = "SELECT pg_advisory_lock($1)"
MIGRATION_UNLOCK = "SELECT pg_advisory_unlock($1)"
CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())
"""
APPLIED_MIGRATIONS = "SELECT version FROM schema_migrations"
RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"

# Readiness: the cheapest round trip that proves a pooled connection works.
PING = "SELECT 1"

SIGNING_KEY = "SELECT key FROM page_token_key"
