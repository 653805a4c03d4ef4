/*
 * Who may read a code store: exactly who may read what it was made from.
 *
 * A store holds every row's code of its table, so it serves a role that may SELECT the
 * table's id and code columns and on whom no row-level security policy of the table acts (a
 * store cannot filter by a policy; bitpress_knn then searches the table itself, through the
 * policy). It serves nobody once it no longer follows its table: the table (tracked by OID) or
 * one of the two columns is gone, or one of its three triggers is missing or disabled, so
 * that writes may have escaped it.
 *
 * bitpress_store_readable(store, source, id_column, code_column, raise) is the row-level
 * security policy of bitpress.code_stores (schema revision 0008), through which the policies
 * of code_segments and code_delta run, and the check every reader makes before it answers
 * (raise => true: the reason, as an error with its SQLSTATE).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rls.h"
#include "utils/syscache.h"

#include "bitpress.h"

/* schema-qualified, quoted name of a relation that exists */
static char *
relation_name(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}

/* whether trigger name is on relid and enabled */
static bool
trigger_enabled(Oid relid, const char *name)
{
	Relation	tgrel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyData key[2];
	SysScanDesc scan;
	HeapTuple	tup;
	bool		ok = false;

	ScanKeyInit(&key[0], Anum_pg_trigger_tgrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	ScanKeyInit(&key[1], Anum_pg_trigger_tgname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum(name));
	scan = systable_beginscan(tgrel, TriggerRelidNameIndexId, true, NULL, 2, key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		ok = ((Form_pg_trigger) GETSTRUCT(tup))->tgenabled != TRIGGER_DISABLED;
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);
	return ok;
}

bool
store_readable(const char *store, Oid relid, const char *id_column, const char *code_column,
			   bool raise)
{
	Oid			user = GetUserId();
	const char *columns[2] = {id_column, code_column};
	AttrNumber	att[2];
	const char *suffix[3] = {"_i", "_u", "_d"};
	char	   *trig;
	char	   *rel;

	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
	{
		if (raise)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("code store \"%s\" follows a table that no longer exists (OID %u)",
							store, relid),
					 errhint("Drop the store with bitpress_store_drop('%s').", store)));
		return false;
	}
	rel = relation_name(relid);
	for (int i = 0; i < 2; i++)
	{
		att[i] = get_attnum(relid, columns[i]);
		if (att[i] == InvalidAttrNumber)
		{
			if (raise)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_COLUMN),
						 errmsg("code store \"%s\" follows column \"%s\" of table %s, which no longer exists",
								store, columns[i], rel),
						 errhint("Drop the store and create it again on the renamed column.")));
			return false;
		}
	}
	trig = text_to_cstring(DatumGetTextPP(DirectFunctionCall1(md5_text,
															  CStringGetTextDatum(store))));
	for (int i = 0; i < 3; i++)
	{
		char	   *name = psprintf("bitpress_store_%s%s", trig, suffix[i]);

		if (!trigger_enabled(relid, name))
		{
			if (raise)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("code store \"%s\" no longer follows table %s: its trigger %s is missing or disabled",
								store, rel, name),
						 errdetail("Writes to the table may have escaped the store, so it is not used."),
						 errhint("Drop the store and create it again.")));
			return false;
		}
	}
	if (pg_class_aclcheck(relid, user, ACL_SELECT) != ACLCHECK_OK &&
		(pg_attribute_aclcheck(relid, att[0], user, ACL_SELECT) != ACLCHECK_OK ||
		 pg_attribute_aclcheck(relid, att[1], user, ACL_SELECT) != ACLCHECK_OK))
	{
		if (raise)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for table %s", rel),
					 errdetail("Code store \"%s\" serves the roles that may read columns \"%s\" and \"%s\" of the table.",
							   store, id_column, code_column)));
		return false;
	}
	if (check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED)
	{
		if (raise)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("row-level security of table %s applies to role %s: code store \"%s\" cannot answer under its policies",
							rel, GetUserNameFromId(user, false), store),
					 errhint("bitpress_knn() searches such a table exactly, through its policies.")));
		return false;
	}
	return true;
}

PG_FUNCTION_INFO_V1(store_readable_sql);
Datum
store_readable_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(store_readable(text_to_cstring(PG_GETARG_TEXT_PP(0)), PG_GETARG_OID(1),
								  text_to_cstring(PG_GETARG_TEXT_PP(2)),
								  text_to_cstring(PG_GETARG_TEXT_PP(3)), PG_GETARG_BOOL(4)));
}
