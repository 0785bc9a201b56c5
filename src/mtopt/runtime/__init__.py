"""mtopt.runtime"""
