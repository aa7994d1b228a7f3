"""Feast definitions of the retrieval service (written by `build-ensemble build`).

The parquet sources are written by the build; their feature columns are inferred by
`feast apply`, so the same definitions serve every data set. Source paths are relative to
this folder: run the feast CLI from inside it.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, FileSource, ValueType

user = Entity(name="${user_id}", join_keys=["${user_id}"], value_type=ValueType.INT64, description="raw user id")
item = Entity(name="${item_id}", join_keys=["${item_id}"], value_type=ValueType.INT64, description="raw item id")

# ttl=0: rows never expire, so `feast materialize-incremental` loads every row too.
user_features = FeatureView(
    name="${user_view}",
    entities=[user],
    ttl=timedelta(0),
    source=FileSource(
        path="${user_source}",
        timestamp_field="${event_timestamp}",
        created_timestamp_column="${created_timestamp}",
    ),
    online=True,
)

item_features = FeatureView(
    name="${item_view}",
    entities=[item],
    ttl=timedelta(0),
    source=FileSource(
        path="${item_source}",
        timestamp_field="${event_timestamp}",
        created_timestamp_column="${created_timestamp}",
    ),
    online=True,
)

user_features_v1 = FeatureService(name="${user_service}", features=[user_features])
item_features_v1 = FeatureService(name="${item_service}", features=[item_features])
