-- bitpress 0.5.0: hardening. Nothing read from a table is trusted, no result is a non-value,
-- and code stores follow their table (by OID) under its privileges and row-level security.
\echo Use "ALTER EXTENSION bitpress UPDATE TO '0.5.0'" to load this file. \quit

-- values: pgvector's other types, NULL queries, results checked ----------------------------------

-- code stores: tracked by OID, invariants, integrity, privileges ---------------------------------
