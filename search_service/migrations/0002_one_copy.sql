-- One copy of each vector. The float32 `embedding` is the only copy; EXACT no longer
-- sums cube chunks in the database but walks lower-bound cubes (see image_lists.coarse)
-- and re-ranks in the service. Dropping a column is a catalogue change, instant on any
-- table size; PostgreSQL frees the old chunks' space as rows are next rewritten.

ALTER TABLE images DROP COLUMN unit;
DROP FUNCTION imagesearch_distance(cube[], cube[]);
DROP FUNCTION imagesearch_chunks(float8[]);

-- A bounded projection's cubes hold the d projected coordinates plus the norm of the
-- residual, so that cube_distance never exceeds the true distance. Projections fitted
-- before hold the d coordinates alone: they keep serving FAST, and the service refits a
-- bounded one in the background at start-up.
ALTER TABLE projections ADD COLUMN bounded boolean NOT NULL DEFAULT false;
ALTER TABLE projections ALTER COLUMN bounded SET DEFAULT true;

-- One entry per image and version. A write that raced a fit could leave the fit's stale
-- entry beside the write's own; with this key the later of the two is refused.
DELETE FROM image_lists a USING image_lists b
WHERE a.image_id = b.image_id AND a.version = b.version AND a.list_id > b.list_id;
DROP INDEX image_lists_image;
CREATE UNIQUE INDEX image_lists_image ON image_lists (image_id, version);
