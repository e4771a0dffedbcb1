"""Every SQL statement of the search service, parameterised; nothing is formatted in."""

from __future__ import annotations

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

# The default collection always exists: deleting it empties and unbinds it instead.
EMPTY_COLLECTION = """
WITH gone AS (DELETE FROM images WHERE collection_id = $1 RETURNING 1),
     unbound AS (
         UPDATE collections
         SET model_name = NULL, model_version = NULL, dimension = NULL, serving_version = NULL
         WHERE id = $1 RETURNING 1)
SELECT count(*) FROM gone
"""

DELETE_PROJECTIONS = "DELETE FROM projections WHERE collection_id = $1"

COUNT_IMAGES = "SELECT count(*) FROM images WHERE collection_id = $1"

BIND_MODEL = """
UPDATE collections SET model_name = $2, model_version = $3, dimension = $4
WHERE id = $1 AND model_name IS NULL
"""

COLLECTION_MODEL = "SELECT model_name, model_version, dimension FROM collections WHERE id = $1"

EXISTING = """
SELECT key, content_sha256, metadata FROM images
WHERE collection_id = $1 AND key = ANY($2::text[])
"""

# Vectors are stored uncompressed: they do not compress, and pglz costs more than
# the whole rest of ingest.
CREATE_STAGING = """
CREATE TEMPORARY TABLE staging_images (
    key text NOT NULL,
    content_sha256 bytea,
    metadata jsonb NOT NULL,
    embedding bytea NOT NULL,
    unit float8[] NOT NULL
) ON COMMIT DROP;
ALTER TABLE staging_images ALTER embedding SET STORAGE EXTERNAL, ALTER unit SET STORAGE EXTERNAL
"""

UPSERT_FROM_STAGING = """
INSERT INTO images AS i (collection_id, key, content_sha256, metadata, embedding, unit)
SELECT $1, s.key, s.content_sha256, s.metadata, s.embedding, imagesearch_chunks(s.unit)
FROM staging_images s
ON CONFLICT (collection_id, key) DO UPDATE
SET content_sha256 = EXCLUDED.content_sha256,
    metadata = EXCLUDED.metadata,
    embedding = EXCLUDED.embedding,
    unit = EXCLUDED.unit,
    updated_at = now()
RETURNING i.id, i.key, (i.xmax = 0) AS created
"""

UPDATE_METADATA = """
UPDATE images SET metadata = $3, updated_at = now()
WHERE collection_id = $1 AND key = $2
"""

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
SELECT version, state, dimensions, lists, fitted_on, fitted_at FROM projections
WHERE collection_id = $1 AND state IN ('building', 'ready')
ORDER BY version
"""

PROJECTION_MODEL = "SELECT model FROM projections WHERE collection_id = $1 AND version = $2"

EMBEDDING_OF = "SELECT embedding FROM images WHERE collection_id = $1 AND key = $2"

IMAGE = """
SELECT key, content_sha256, metadata, created_at, updated_at, embedding
FROM images WHERE collection_id = $1 AND key = $2
"""

DELETE_IMAGES = """
DELETE FROM images WHERE collection_id = $1 AND key = ANY($2::text[]) RETURNING key
"""

# EXACT: every image of the collection, distance computed in the database. The
# query's chunks sit in a scalar subquery so they are built once, not per row.
_EXACT = """
SELECT key, metadata, distance FROM (
    SELECT key, metadata,
           imagesearch_distance(unit, (SELECT imagesearch_chunks($2::float8[]))) AS distance
    FROM images
    WHERE collection_id = $1 AND key IS DISTINCT FROM $3 {filter}
    OFFSET 0  -- a fence: else the outer filter is pushed down and every distance computed twice
) ranked
WHERE distance <= $4
ORDER BY distance, key
LIMIT $5 OFFSET $6
"""
SEARCH_EXACT = _EXACT.format(filter="")
SEARCH_EXACT_FILTERED = _EXACT.format(filter="AND metadata @> $7")

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

DELETE_RETIRED_PROJECTIONS = """
DELETE FROM projections WHERE collection_id = $1 AND state = 'retired'
"""

ABANDON_PROJECTION = "DELETE FROM projections WHERE collection_id = $1 AND version = $2"

ANALYZE_LISTS = "ANALYZE image_lists"

FIT_LOCK = "SELECT pg_try_advisory_lock($1, $2)"
FIT_UNLOCK = "SELECT pg_advisory_unlock($1, $2)"
