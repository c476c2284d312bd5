"""Reading neurons: records of top contexts, LM-head decoding, interventions, sparse autoencoders.

Every tool here runs on the shared mechanism (canonical sites, scoped ``capture`` hooks, mergeable
statistics), on any architecture in the adapter table.
"""
