"""mtopt.replay"""
