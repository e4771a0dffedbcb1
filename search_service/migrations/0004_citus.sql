-- On a Citus coordinator, the same tables spread over the workers; on plain PostgreSQL
-- nothing happens. Images and their list entries are hash-distributed by the image id and
-- co-located, so that one collection spreads over every shard and an image's entries sit
-- in its shard (the cascade, and the joins on the id, stay inside a shard). Collections
-- and projections are small: reference tables, a copy on every node. The reasons and the
-- costs: docs/scaling.md.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    -- A unique constraint on a distributed table must hold its distribution column, so
    -- (collection_id, key) cannot stay unique by itself. The id becomes a hash of the
    -- pair instead (the store writes it): a key has one id and so one shard, and the
    -- primary key keeps a key from being stored twice. Two keys of one hash: the second
    -- is refused, never written over the first.
    ALTER TABLE images DROP CONSTRAINT images_collection_id_key_key;
    ALTER TABLE images ALTER COLUMN id DROP IDENTITY;
    -- A local table may not reference a distributed one: the entries' foreign key to
    -- their image waits until both are distributed.
    ALTER TABLE image_lists DROP CONSTRAINT image_lists_image_id_fkey;
    -- A database that served on one node first: its rows take their hashed ids.
    UPDATE image_lists l
    SET image_id = greatest(hashtextextended(i.key, i.collection_id) & 9223372036854775807, 1)
    FROM images i WHERE i.id = l.image_id;
    UPDATE images
    SET id = greatest(hashtextextended(key, collection_id) & 9223372036854775807, 1);
    CREATE INDEX images_key ON images (collection_id, key);
    PERFORM create_reference_table('collections');
    PERFORM create_reference_table('projections');
    PERFORM create_distributed_table('images', 'id');
    PERFORM create_distributed_table('image_lists', 'image_id', colocate_with => 'images');
    ALTER TABLE image_lists ADD CONSTRAINT image_lists_image_id_fkey
        FOREIGN KEY (image_id) REFERENCES images ON DELETE CASCADE;
END
$$;
