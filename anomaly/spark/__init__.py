"""Batch scoring on Apache Spark: a bundle scores a Parquet / CSV / JSON dataset or a folder of
images with ``mapInPandas``, loaded once per executor Python worker (``anomaly.spark.scoring``).

pyspark is the optional extra ``anomaly-gan[spark]``; nothing else in the package imports it.
"""
