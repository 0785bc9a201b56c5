"""mtopt.sim"""
