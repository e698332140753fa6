"""Scan reports: the Parquet schema (schema), writing them resumably (writer), reading them back
(read), and the moderators' review page (review/)."""
