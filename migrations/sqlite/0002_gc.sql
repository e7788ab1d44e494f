-- Garbage collection looks manifests up by digest across repositories (is any repository
-- still holding it?), and so does the foreign key check when a manifest row is deleted.
CREATE INDEX repo_manifests_digest ON repo_manifests(digest);
