"""fusionrec.train"""
